"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization", section 4.2).

Quantization shifts the mean of a layer's output. For each layer, in execution order, the shift
``E[y_fp32] - E[y_quant]`` per output channel is measured on calibration data (before the layer's
activation function) and added to the layer's bias, so that later layers already see the corrected
outputs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
import torch.fx as fx
from torch import Tensor, nn

from .._constraints import Constraint, Interval
from .._errors import EncodingsNotComputedError
from ..quantsim import QuantSim
from ._config import TechniqueConfig, bad_argument
from ._graph import ensure_bias, num_calls
from ._layer_walk import NEVER_RAN, LayerWalk, ModelInputs, calibration_inputs, select_layers
from ._registry import Dimension, SuggestContext, TechniqueSpec, register_technique
from ._running import float_mode

__all__ = ["BiasCorrectionConfig", "BiasCorrectionLayerResult", "BiasCorrectionReport", "correct_bias"]

logger = logging.getLogger(__name__)

META_BIAS_CORRECTION = "bias_correction"


@dataclasses.dataclass(frozen=True)
class BiasCorrectionConfig(TechniqueConfig):
    """Settings of :func:`correct_bias`.

    Args:
        num_batches: calibration batches the means are measured on.
    """

    technique: ClassVar[str] = "bc"

    num_batches: int = 8

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {"num_batches": [Interval(int, 1, None)]}


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


class _BiasCorrectionWalk(LayerWalk):
    """At each layer, after it ran: the shift of its output mean goes into its bias and its outputs."""

    progress_label = "Bias correction"
    visit_before_step = False

    def __init__(self, sim: QuantSim, layers: list[str]) -> None:
        super().__init__(sim, layers)
        self.reference: dict[str, _ChannelMean] = {}
        self.results: list[BiasCorrectionLayerResult] = []

    def start(self, inputs: ModelInputs) -> None:
        """The FP32 output means, from one pass with every quantizer off."""
        sim = self.sim
        self.reference = {n: _ChannelMean(isinstance(sim.layer(n), nn.Linear)) for n in self.layers}
        handles = [sim.layer(n).register_forward_hook(lambda _m, _i, y, acc=self.reference[n]: acc.add(y)) for n in self.layers]
        try:
            with float_mode(sim), torch.no_grad():
                for args, kwargs in inputs:
                    sim.model(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
        self.skipped += [(n, NEVER_RAN) for n in self.layers if self.reference[n].total is None]
        self.pending = {n for n in self.layers if self.reference[n].total is not None}
        super().start(inputs)

    def visit(self, node: fx.Node, name: str) -> None:
        assert self.stepper is not None
        module = self.sim.layer(name)
        linear = isinstance(module, nn.Linear)
        measured = _ChannelMean(linear)
        outputs = self.stepper.values(node)
        for y in outputs:
            measured.add(y)
        shift = self.reference[name].mean - measured.mean
        bias = ensure_bias(module)
        bias.add_(shift.to(bias.dtype))
        for y in outputs:  # the later layers see the corrected output
            y.add_(shift.to(y.dtype).reshape([-1] + [1] * (y.dim() - 2)) if not linear else shift.to(y.dtype))
        self.results.append(BiasCorrectionLayerResult(name, float(shift.abs().mean()), float(shift.abs().max())))


def correct_bias(
    sim: QuantSim,
    data_loader: Iterable[Any],
    config: BiasCorrectionConfig | None = None,
    *,
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
) -> QuantSim:
    """Empirical bias correction of every Conv/ConvTranspose/Linear layer of a calibrated sim.

    The FP32 means come from one pass of the sim with every quantizer off. Then all batches go
    through the quantized sim together, one graph node at a time; at each layer the difference of
    the means is added to the layer's bias (a zero bias is created when the layer has none) and to
    the layer's outputs already computed, so the following layers see the corrected values. The
    data runs through the model twice in all; memory holds the live activations of all batches.

    Args:
        sim: a calibrated :class:`~aq_search.QuantSim` (encodings computed); modified in place and returned.
        data_loader: a re-iterable of calibration batches.
        config: a :class:`BiasCorrectionConfig`; defaults when None.
        forward_fn: ``forward_fn(model, batch)`` feeds one batch to the model, for batches that are
            not the model's inputs as they are (called once per batch with a stand-in that records
            the model's arguments); default ``model(batch)`` / ``model(*batch)`` / ``model(**batch)``.

    Returns:
        ``sim``, with ``sim.model.meta["aq_search"]["bias_correction"]`` a :class:`BiasCorrectionReport`.

    Raises:
        EncodingsNotComputedError: the sim has no encodings yet.
        InvalidInputError: bad arguments or an empty data loader.

    Example:
        >>> import torch
        >>> from aq_search import QuantSim
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
        >>> batches = [torch.rand(8, 3, 8, 8) for _ in range(2)]
        >>> sim = QuantSim(net, batches[0], default_param_bw=4, per_channel=False)
        >>> sim.compute_encodings(batches)
        >>> sim = correct_bias(sim, batches)
        >>> [r.name for r in sim.model.meta["aq_search"]["bias_correction"].layers]
        ['0', '2']
    """
    config = BiasCorrectionConfig() if config is None else config
    if not isinstance(sim, QuantSim):
        raise bad_argument("sim", "correct_bias", "a QuantSim", sim)
    if not isinstance(config, BiasCorrectionConfig):
        raise bad_argument("config", "correct_bias", "a BiasCorrectionConfig or None", config)
    quantizers = list(sim.param_quantizers.values()) + list(sim.activation_quantizers.values())
    missing = [q for q in quantizers if q.enabled and q.dtype == "int" and q.scale is None]
    if missing or not any(q.scale is not None for q in quantizers):
        raise EncodingsNotComputedError(
            "correct_bias needs the sim's encodings: call sim.compute_encodings(batches) (or sim.load_encodings) first."
        )
    inputs = calibration_inputs(data_loader, config.num_batches, forward_fn, "correct_bias")
    calls = num_calls(sim.model)
    layers, skipped = select_layers(
        sim,
        "{kind} has no bias to correct",
        lambda name, _: None if calls.get(name, 0) == 1 else f"it is called {calls.get(name, 0)} times (shared weights)",
    )
    walk = _BiasCorrectionWalk(sim, layers)
    skipped += walk.walk(inputs)
    results = walk.results
    report = BiasCorrectionReport(tuple(results), tuple(skipped))
    sim.model.meta["aq_search"][META_BIAS_CORRECTION] = report
    logger.info("correct_bias: corrected %d layer(s), %d skipped", len(results), len(skipped))
    return sim


def _suggest(ctx: SuggestContext) -> BiasCorrectionConfig:
    """``bc__num_batches``, at most the batches the search holds."""
    return BiasCorrectionConfig(num_batches=ctx.clamp_batches(ctx.draw("num_batches")))


register_technique(
    TechniqueSpec(
        key="bc",
        config_class=BiasCorrectionConfig,
        apply=correct_bias,
        acts_on="sim",
        description="empirical bias correction",
        after=("scheme",),
        dimensions=(Dimension("num_batches", int, 4, 1, 100_000),),
        cost="data",
        space_key="bias_correction",
        meta_key="bias_correction",
        in_every_space=True,
        suggest=_suggest,
        describe_config=lambda config: "bc",  # records name the stage only
    )
)
