"""The ``amp`` stage of a pipeline: mixed precision within the cost budget, never worse than its input."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..quantsim import QuantSim
from ..techniques._registry import Dimension, TechniqueSpec, register_technique
from ._escape_stage import escape_hatch_applies, lift_stage
from ._pipeline import RunContext

__all__ = ["amp_stage", "replay_amp"]

logger = logging.getLogger(__name__)


def _amp_config_class() -> type:
    from ..amp import MixedPrecisionConfig

    return MixedPrecisionConfig


register_technique(
    TechniqueSpec(
        key="amp",
        config_class=_amp_config_class(),
        apply=None,
        acts_on="sim",
        description="automatic mixed precision (per-layer bit-widths)",
        after=("scheme",),
        dimensions=(Dimension("num_samples_for_phase_1", int, 128, 1, 10_000_000),),
        cost="eval",
    )
)


def amp_stage(ctx: RunContext, sim: QuantSim, config: Any, input_score: float | None) -> tuple[QuantSim, Any, str]:
    """Run AMP on ``sim`` (in place) within the cost budget; returns ``(sim, MixedPrecisionResult, note)``.

    ``input_score`` is the input sim's full-evaluation score (the stage before): AMP never returns a
    config scoring below it (it restores the input instead).
    """
    from ..amp import apply_mixed_precision

    budget = ctx.budget
    limit = None if budget is None else (budget.requested, budget.max_relative_bops)
    full_phase2 = getattr(config, "num_samples_for_phase_2", None) is None
    if escape_hatch_applies(sim, config, limit):
        amp_result = lift_stage(ctx, sim, config, limit, input_score if full_phase2 else None)
        kept = " (kept the input: no lift scored higher)" if amp_result.message.startswith("Kept the input") else ""
        return sim, amp_result, f"lifted within the budget: {amp_result.message}{kept}"
    amp_result = apply_mixed_precision(
        sim,
        config,
        eval_callback=ctx.evaluate,
        allowed_accuracy_drop=max(0.0, ctx.fp32_accuracy - ctx.target),
        fp32_accuracy=ctx.fp32_accuracy,
        forward_fn=ctx.feed,
        progress=False,
        budget=limit if getattr(config, "cost", "bops") == "bops" else None,
        input_accuracy=input_score if full_phase2 else None,
    )
    kept = " (kept the input: AMP's choice scored lower)" if amp_result.message.startswith("Kept the input") else ""
    return sim, amp_result, f"relative BOPs {amp_result.relative_bops:.3f} of all-highest{kept}"


def replay_amp(sim: QuantSim, config: Mapping[str, str]) -> None:
    """Apply an AMP result recorded in the study (``{layer: candidate}``) without searching again."""
    from ..amp import set_mixed_precision

    set_mixed_precision(sim, dict(config))
