"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization", section 4.2).

Quantization shifts the mean of a layer's output. For each layer, in execution order, the shift
``E[y_fp32] - E[y_quant]`` per output channel is measured on calibration data (before the layer's
activation function) and added to the layer's bias, so that later layers already see the corrected
outputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._data import feed_batch
from .._errors import CalibrationError, EncodingsNotComputedError
from ..quantsim import QuantSim
from ._config import TechniqueConfig, bad_argument
from ._graph import CONV_TRANSPOSES, CONVS, ensure_bias, num_calls
from ._running import StopForward, float_mode, materialize_batches

__all__ = ["BiasCorrectionConfig", "BiasCorrectionLayerResult", "BiasCorrectionReport", "correct_bias"]

logger = logging.getLogger(__name__)

META_BIAS_CORRECTION = "bias_correction"
_SUPPORTED = (*CONVS, *CONV_TRANSPOSES, nn.Linear)


@dataclasses.dataclass(frozen=True)
class BiasCorrectionConfig(TechniqueConfig):
    """Settings of :func:`correct_bias`.

    Args:
        num_batches: calibration batches the means are measured on.
    """

    technique: ClassVar[str] = "bc"

    num_batches: int = 8

    def __post_init__(self) -> None:
        self._check_int("num_batches", 1)


@dataclasses.dataclass(frozen=True)
class BiasCorrectionLayerResult:
    """The shift removed from one layer: mean and largest absolute per-channel shift of the output mean."""

    name: str
    mean_abs_shift: float
    max_abs_shift: float


@dataclasses.dataclass(frozen=True)
class BiasCorrectionReport:
    """What :func:`correct_bias` did; in ``sim.model.meta["aq_search"]["bias_correction"]``."""

    layers: tuple[BiasCorrectionLayerResult, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()


class _ChannelMean:
    """Accumulates the per-output-channel sum of a layer's outputs."""

    def __init__(self, linear: bool) -> None:
        self.linear = linear
        self.total: Tensor | None = None
        self.count = 0

    def add(self, y: Tensor) -> None:
        y = y.detach()
        rows = y.reshape(-1, y.shape[-1]) if self.linear else y.movedim(1, -1).reshape(-1, y.shape[1])
        s = rows.sum(0, dtype=torch.float64)
        self.total = s if self.total is None else self.total + s
        self.count += rows.shape[0]

    @property
    def mean(self) -> Tensor:
        assert self.total is not None
        return self.total / max(1, self.count)


def _run(sim: QuantSim, batches: list[Any], feed: Callable[[nn.Module, Any], Any]) -> None:
    for batch in batches:
        with contextlib.suppress(StopForward):
            feed(sim.model, batch)


def correct_bias(
    sim: QuantSim,
    data_loader: Iterable[Any],
    config: BiasCorrectionConfig | None = None,
    *,
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
) -> QuantSim:
    """Empirical bias correction of every Conv/ConvTranspose/Linear layer of a calibrated sim.

    The FP32 means come from one pass of the sim with every quantizer off; then, layer by layer,
    the quantized sim runs up to the layer (the rest of the forward is skipped) and the difference
    of the means is added to the layer's bias (a zero bias is created when the layer has none).

    Args:
        sim: a calibrated :class:`~aq_search.QuantSim` (encodings computed); modified in place and returned.
        data_loader: a re-iterable of calibration batches.
        config: a :class:`BiasCorrectionConfig`; defaults when None.
        forward_fn: ``forward_fn(model, batch)`` runs one batch; default ``model(batch)`` /
            ``model(*batch)`` / ``model(**batch)``.

    Returns:
        ``sim``, with ``sim.model.meta["aq_search"]["bias_correction"]`` a :class:`BiasCorrectionReport`.

    Raises:
        EncodingsNotComputedError: the sim has no encodings yet.
        InvalidInputError: bad arguments or an empty data loader.
    """
    config = BiasCorrectionConfig() if config is None else config
    if not isinstance(sim, QuantSim):
        raise bad_argument("sim", "correct_bias", "a QuantSim", sim)
    if not isinstance(config, BiasCorrectionConfig):
        raise bad_argument("config", "correct_bias", "a BiasCorrectionConfig or None", config)
    feed = forward_fn if forward_fn is not None else feed_batch
    if not callable(feed):
        raise bad_argument("forward_fn", "correct_bias", "a callable forward_fn(model, batch) or None", forward_fn)
    quantizers = list(sim.param_quantizers.values()) + list(sim.activation_quantizers.values())
    missing = [q for q in quantizers if q.enabled and q.dtype == "int" and q.scale is None]
    if missing or not any(q.scale is not None for q in quantizers):
        raise EncodingsNotComputedError(
            "correct_bias needs the sim's encodings: call sim.compute_encodings(forward_fn) (or sim.load_encodings) first."
        )
    batches = materialize_batches(data_loader, config.num_batches, "correct_bias")

    calls = num_calls(sim.model)
    layers: list[str] = []
    skipped: list[tuple[str, str]] = []
    for name in sim.quantized_layers:
        module = sim.layer(name)
        if not isinstance(module, _SUPPORTED):
            skipped.append((name, f"{type(module).__name__} has no bias to correct"))
        elif calls.get(name, 0) != 1:
            skipped.append((name, f"it is called {calls.get(name, 0)} times (shared weights)"))
        else:
            layers.append(name)

    training = sim.model.training
    sim.model.eval()
    try:
        reference = {n: _ChannelMean(isinstance(sim.layer(n), nn.Linear)) for n in layers}
        handles = [sim.layer(n).register_forward_hook(lambda _m, _i, y, acc=reference[n]: acc.add(y)) for n in layers]
        try:
            with float_mode(sim), torch.no_grad():
                _run(sim, batches, feed)
        finally:
            for h in handles:
                h.remove()
        results: list[BiasCorrectionLayerResult] = []
        for name in tqdm(layers, desc="Bias correction", unit="layer", disable=None, leave=False):
            if reference[name].total is None:
                skipped.append((name, "it never ran on the calibration batches"))
                continue
            module = sim.layer(name)
            measured = _ChannelMean(isinstance(module, nn.Linear))

            def stop(_m: nn.Module, _i: Any, y: Tensor, acc: _ChannelMean = measured) -> None:
                acc.add(y)
                raise StopForward

            handle = module.register_forward_hook(stop)
            try:
                with torch.no_grad():
                    _run(sim, batches, feed)
            finally:
                handle.remove()
            if measured.total is None:
                raise CalibrationError(f"correct_bias: layer {name!r} did not run in the quantized model")
            shift = reference[name].mean - measured.mean
            with torch.no_grad():
                bias = ensure_bias(module)
                bias.add_(shift.to(bias.dtype))
            results.append(BiasCorrectionLayerResult(name, float(shift.abs().mean()), float(shift.abs().max())))
    finally:
        sim.model.train(training)
    report = BiasCorrectionReport(tuple(results), tuple(skipped))
    sim.model.meta["aq_search"][META_BIAS_CORRECTION] = report
    logger.info("correct_bias: corrected %d layer(s), %d skipped", len(results), len(skipped))
    return sim
