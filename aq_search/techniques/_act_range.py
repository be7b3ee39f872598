"""Per-layer activation range search: clip each activation quantizer's range where its error is smallest.

A calibrated sim's activation encodings come from one range estimator for every layer. This technique
records, in one pass of the quantized sim over a few calibration batches, the input of every
per-tensor integer activation quantizer, then tries ``num_candidates`` clipping ratios of its range,
``min_ratio .. 1`` (1 = the calibrated range, tried first), and keeps per quantizer the range whose
fake-quantized output has the smallest mean squared error against the float input (a fused
ReLU/ReLU6 applied to it). Ties keep the wider range, so no quantizer's error on the recorded data
grows. The inputs are recorded before any range changes; later ranges are not re-fitted to the
changed inputs of earlier ones.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._constraints import Constraint, Interval
from .._errors import EncodingsNotComputedError
from ..quantsim import FakeQuantizer, QuantSim
from ..quantsim._fake_quant import encoding_from_range
from ._config import TechniqueConfig, bad_argument
from ._registry import Dimension, TechniqueSpec, register_technique
from ._running import materialize_batches, model_inputs

__all__ = ["ActivationRangeReport", "ActivationRangeSearchConfig", "search_activation_ranges"]

logger = logging.getLogger(__name__)

#: At most this many values of each quantizer's input are kept (evenly strided), to bound memory.
MAX_VALUES = 1 << 16


@dataclasses.dataclass(frozen=True)
class ActivationRangeSearchConfig(TechniqueConfig):
    """Settings of :func:`search_activation_ranges`.

    Attributes:
        num_batches: calibration batches recorded (1 or more).
        min_ratio: the narrowest range tried, as a fraction of the calibrated one, in (0, 1].
        num_candidates: ratios tried per quantizer, evenly spaced from 1 down to ``min_ratio`` (2..256).
    """

    technique: ClassVar[str] = "ars"

    num_batches: int = 2
    min_ratio: float = 0.5
    num_candidates: int = 8

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "num_batches": [Interval(int, 1, None)],
        "min_ratio": [Interval(float, 0.0, 1.0, closed="right")],
        "num_candidates": [Interval(int, 2, 256)],
    }


@dataclasses.dataclass(frozen=True)
class ActivationRangeReport:
    """What :func:`search_activation_ranges` did; in ``sim.model.meta["aq_search"]["ars"]``.

    ``ratios`` maps each searched quantizer to the ratio kept; ``mse_before`` / ``mse_after`` are its
    quantization error on the recorded inputs with the calibrated and the kept range.
    """

    ratios: dict[str, float]
    mse_before: dict[str, float]
    mse_after: dict[str, float]


def _searchable(q: FakeQuantizer) -> bool:
    return q.enabled and q.dtype == "int" and not q.per_channel and q.scale is not None and q.zero_point is not None


def _record_inputs(sim: QuantSim, names: list[str], inputs: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> dict[str, Tensor]:
    seen: dict[str, list[Tensor]] = {n: [] for n in names}
    quantizers = sim.activation_quantizers

    def hook(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def record(_: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if isinstance(x, Tensor) and x.is_floating_point():
                flat = x.detach().reshape(-1)
                step = max(1, flat.numel() // MAX_VALUES)
                seen[name].append(flat[::step].float().clone())

        return record

    handles = [quantizers[n].register_forward_pre_hook(hook(n)) for n in names]
    training = sim.model.training
    sim.model.eval()
    try:
        with torch.no_grad():
            for args, kwargs in inputs:
                sim.model(*args, **kwargs)
    finally:
        sim.model.train(training)
        for h in handles:
            h.remove()
    out = {}
    for name, parts in seen.items():
        if parts:
            values = torch.cat(parts)
            step = max(1, values.numel() // MAX_VALUES)
            out[name] = values[::step]
    return out


def _mse(q: FakeQuantizer, x: Tensor, reference: Tensor) -> float:
    with torch.no_grad():
        return float(torch.mean((q(x) - reference) ** 2))


def search_activation_ranges(
    sim: QuantSim,
    data_loader: Iterable[Any],
    config: ActivationRangeSearchConfig | None = None,
    *,
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
) -> QuantSim:
    """Per-layer activation range search on a calibrated sim (its activation encodings, in place).

    Args:
        sim: a calibrated :class:`~aq_search.QuantSim`; modified in place and returned.
        data_loader: a re-iterable of calibration batches.
        config: an :class:`ActivationRangeSearchConfig`; defaults when None.
        forward_fn: ``forward_fn(model, batch)`` feeds one batch, for batches that are not the
            model's inputs as they are.

    Returns:
        ``sim``, with ``sim.model.meta["aq_search"]["ars"]`` an :class:`ActivationRangeReport`.

    Raises:
        EncodingsNotComputedError: the sim has no activation encodings yet.
        InvalidInputError: bad arguments or an empty data loader.

    Example:
        >>> import torch
        >>> from aq_search import QuantSim
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> batches = [torch.randn(16, 4) for _ in range(2)]
        >>> sim = QuantSim(net, batches[0], default_output_bw=4, quant_scheme="tf")
        >>> sim.compute_encodings(batches)
        >>> sim = search_activation_ranges(sim, batches)
        >>> all(0.5 <= r <= 1.0 for r in sim.model.meta["aq_search"]["ars"].ratios.values())
        True
    """
    config = ActivationRangeSearchConfig() if config is None else config
    if not isinstance(sim, QuantSim):
        raise bad_argument("sim", "search_activation_ranges", "a QuantSim", sim)
    if not isinstance(config, ActivationRangeSearchConfig):
        raise bad_argument("config", "search_activation_ranges", "an ActivationRangeSearchConfig or None", config)
    quantizers = sim.activation_quantizers
    if any(q.enabled and q.dtype == "int" and q.scale is None for q in quantizers.values()):
        raise EncodingsNotComputedError("search_activation_ranges needs a calibrated sim: call sim.compute_encodings(...) first.")
    batches = materialize_batches(data_loader, config.num_batches, "search_activation_ranges")
    names = [n for n, q in quantizers.items() if _searchable(q)]
    recorded = _record_inputs(sim, names, model_inputs(batches, forward_fn))
    ratios = torch.linspace(1.0, config.min_ratio, config.num_candidates).tolist()
    report = ActivationRangeReport({}, {}, {})
    for name, x in recorded.items():
        q = quantizers[name]
        assert q.scale is not None and q.zero_point is not None
        qmin, qmax = q.quant_range
        scale0, zp0 = q.scale.clone(), q.zero_point.clone()
        lo0, hi0 = (qmin - zp0.float()) * scale0, (qmax - zp0.float()) * scale0
        reference = q._apply_clamp(x) if q.fused_clamp is not None else x
        best_ratio, best_mse = 1.0, _mse(q, x, reference)
        before = best_mse
        for ratio in ratios[1:]:
            q.set_encoding(*encoding_from_range(lo0 * ratio, hi0 * ratio, q.bitwidth, q.symmetric))
            mse = _mse(q, x, reference)
            if mse < best_mse:
                best_ratio, best_mse = float(ratio), mse
        if best_ratio == 1.0:
            q.set_encoding(scale0, zp0)
        else:
            q.set_encoding(*encoding_from_range(lo0 * best_ratio, hi0 * best_ratio, q.bitwidth, q.symmetric))
        report.ratios[name], report.mse_before[name], report.mse_after[name] = best_ratio, before, best_mse
    logger.info("activation range search: %d of %d quantizers narrowed", sum(r < 1.0 for r in report.ratios.values()), len(names))
    sim.model.meta.setdefault("aq_search", {})["ars"] = report
    return sim


register_technique(
    TechniqueSpec(
        key="ars",
        config_class=ActivationRangeSearchConfig,
        apply=search_activation_ranges,
        acts_on="sim",
        description="per-layer activation range search (clipping ratio of each activation range, by MSE)",
        after=("scheme",),
        dimensions=(
            Dimension("num_batches", int, 2, 1, 100_000),
            Dimension("min_ratio", float, 0.5, 0.01, 1.0),
            Dimension("num_candidates", int, 8, 2, 256),
        ),
        cost="data",
        space_key="activation_range_search",
        generic=True,
    )
)
