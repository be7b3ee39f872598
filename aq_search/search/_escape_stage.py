"""The ``amp`` stage's escape hatch: lift what hurts from the input up when the budget keeps the result near it.

:func:`~aq_search.amp.apply_mixed_precision` walks down from every group at its highest candidate. Under
a cost budget that all-highest config is often out of reach (all-W16A8 is 2x the BOPs of the all-W8A8
asked for, the default budget 1.5x), and the walk then spends an evaluation on every group to learn
what it may not return. The stage then uses :func:`~aq_search.amp._escape.lift_precision` instead:
the output noise on a calibration batch, not the eval callback, ranks the lifts, and a few evaluations
choose among them.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..amp import MixedPrecisionResult
from ..amp._cost import layer_costs
from ..amp._escape import lift_precision, lifts_pay
from ..quantsim import QuantSim
from ._context import RunContext

__all__ = ["MAX_EVALS", "PROBE_MACS", "PROBE_SAMPLES", "PROBE_SAMPLES_MAX", "escape_hatch_applies", "lift_stage", "probe_samples"]

#: calibration samples the lifts' output noise is measured on at least (the first batch, cut to the
#: probe size when it is one tensor) ...
PROBE_SAMPLES = 8
#: ... and at most, for a model small enough that one probe of that many samples stays within ...
PROBE_SAMPLES_MAX = 64
#: ... this many multiply-accumulates (weight layers, from the sim's dummy-input pass).
PROBE_MACS = 256_000_000
#: evaluations the escape hatch may spend.
MAX_EVALS = 3


def escape_hatch_applies(sim: QuantSim, config: Any, limit: tuple[str, float] | None) -> bool:
    """Whether the stage lifts from the input (a BOPs budget the all-highest config is over)."""
    if limit is None or getattr(config, "cost", "bops") != "bops":
        return False
    return lifts_pay(sim, config.candidates, limit, "bops")


def probe_samples(sim: QuantSim) -> int:
    """Calibration samples per output probe: as many as keep a probe within :data:`PROBE_MACS`, from
    :data:`PROBE_SAMPLES` to :data:`PROBE_SAMPLES_MAX`.

    A few hundred probes rank and combine the lifts. Eight samples keep that affordable on an
    ImageNet model (EfficientNet-Lite0, 385 MMACs per image: 8), but on a small model they are a poor
    sample of the input distribution: on the digits CNN (0.09 MMACs, W4A4 per-tensor, target 0.966)
    the lifts chosen on 8 samples scored 0.962, those chosen on 64 samples 0.970. The MACs are those of
    the dummy input's pass, so a dummy batch of several samples only makes the probe smaller.
    """
    macs = sum(c.macs for c in layer_costs(sim).values())
    if macs <= 0:
        return PROBE_SAMPLES
    return min(PROBE_SAMPLES_MAX, max(PROBE_SAMPLES, PROBE_MACS // macs))


def lift_stage(
    ctx: RunContext, sim: QuantSim, config: Any, limit: tuple[str, float] | None, input_score: float | None
) -> MixedPrecisionResult:
    """Lift the groups whose quantization noise hurts most, within the budget (``sim`` changes in place)."""
    batch = ctx.calibration[0]
    size = probe_samples(sim)
    if isinstance(batch, Tensor) and batch.dim() > 0 and batch.shape[0] > size:
        batch = batch[:size]

    def probe(model: Any) -> None:
        from .._data import feed_batch

        if ctx.forward_fn is not None:
            ctx.forward_fn(model, batch)
        else:
            feed_batch(model, batch)

    return lift_precision(
        sim,
        config.candidates,
        eval_callback=ctx.evaluate,
        target_accuracy=ctx.target,
        probe_fn=probe,
        budget=limit,
        num_samples=config.num_samples_for_phase_2,
        max_evals=MAX_EVALS,
        input_accuracy=input_score,
        fp32_accuracy=ctx.fp32_accuracy,
        first=getattr(config, "lift_first", "share"),
    )
