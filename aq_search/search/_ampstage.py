"""The ``amp`` stage of a pipeline: mixed precision within the cost budget, never worse than its input.

It registers itself like any technique; its section of a space (``amp:``), its trial parameters
(``amp__candidates``, ``amp__num_samples_for_phase_1``), its label and its run are hooks of its spec.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..quantsim import QuantSim
from ..techniques._registry import Dimension, SuggestContext, TechniqueSpec, register_technique
from ._context import RunContext, StageState
from ._escape_stage import escape_hatch_applies, lift_stage
from ._params import Choice, ParamSpec, Where, mapping, param

__all__ = ["AmpSpace", "amp_stage", "candidate_sets", "replay_amp"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AmpSpace:
    """``candidate_sets``: each a list of candidates; ``w{param_bw}a{output_bw}`` is the study's own setting."""

    candidate_sets: tuple[tuple[str, ...], ...]
    num_samples_for_phase_1: ParamSpec


def _amp_config_class() -> type:
    from ..amp import MixedPrecisionConfig

    return MixedPrecisionConfig


def _candidate(text: Any, key: str, where: Where) -> str:
    if not isinstance(text, str):
        raise where.error(
            key, f"an AMP candidate must be a string like 'w8a8' or 'w{{param_bw}}a{{output_bw}}'. Got {text!r} instead."
        )
    probe = text.replace("{param_bw}", "8").replace("{output_bw}", "8")
    if not (re.fullmatch(r"w(\d+)a(\d+)", probe) or probe in ("fp16", "fp32")):
        raise where.error(key, f"{text!r} is not a candidate: use 'w<param bits>a<activation bits>' (e.g. w8a16), fp16 or fp32.")
    return text


def _parse(raw: Any, where: Where) -> AmpSpace:
    amp_raw = mapping(raw, "amp", where, {"candidate_sets", "num_samples_for_phase_1"})
    sets_raw = amp_raw.get("candidate_sets", [["w{param_bw}a{output_bw}", "w8a8"]])
    if not isinstance(sets_raw, (list, tuple)) or not sets_raw:
        raise where.error("amp.candidate_sets", "must be a non-empty list of candidate lists.")
    sets: list[tuple[str, ...]] = []
    for i, s in enumerate(sets_raw):
        if not isinstance(s, (list, tuple)) or len(s) < 2:
            raise where.error(f"amp.candidate_sets[{i}]", f"needs at least two candidates. Got {s!r} instead.")
        sets.append(tuple(_candidate(c, f"amp.candidate_sets[{i}]", where) for c in s))
    phase1 = param(amp_raw.get("num_samples_for_phase_1", 128), "amp.num_samples_for_phase_1", where, int, 1, 10_000_000)
    return AmpSpace(candidate_sets=tuple(sets), num_samples_for_phase_1=phase1)


def _to_yaml(amp: AmpSpace) -> dict[str, Any]:
    return {
        "candidate_sets": [list(s) for s in amp.candidate_sets],
        "num_samples_for_phase_1": amp.num_samples_for_phase_1.to_yaml(),
    }


def candidate_sets(space: Any, param_bw: int, output_bw: int, fixed: tuple[str, ...] | None) -> list[tuple[str, ...]]:
    """The AMP candidate sets with ``{param_bw}``/``{output_bw}`` filled in; sets of fewer than two dropped, and
    sets whose cheapest candidate is over the space's ``max_relative_bops`` budget everywhere. ``fixed``: the
    user's candidates, used instead."""
    if fixed is not None:
        return [fixed]
    from ..amp import parse_candidate

    out: list[tuple[str, ...]] = []
    for s in space.amp.candidate_sets:
        filled = tuple(dict.fromkeys(c.format(param_bw=param_bw, output_bw=output_bw) for c in s))
        # a set whose cheapest candidate costs more than the budget everywhere can never give a result within it
        cheapest = min(parse_candidate(c).param_bw * parse_candidate(c).activation_bw for c in filled)
        if cheapest > space.max_relative_bops * param_bw * output_bw * (1 + 1e-9):
            logger.info("AMP candidate set %s dropped: even its cheapest candidate is over the cost budget", filled)
            continue
        if len(filled) >= 2 and filled not in out:
            out.append(filled)
    return out


def _usable(space: Any, param_bw: int, output_bw: int, fixed: tuple[str, ...] | None) -> bool:
    return bool(candidate_sets(space, param_bw, output_bw, fixed))


def _suggest(ctx: SuggestContext) -> Any:
    """``amp__candidates`` (one of the usable sets) and ``amp__num_samples_for_phase_1``."""
    labels = ["/".join(s) for s in candidate_sets(ctx.space, ctx.param_bw, ctx.output_bw, ctx.fixed)]
    label = ctx.draw("candidates", Choice(tuple(labels)))
    phase1 = int(ctx.draw("num_samples_for_phase_1", ctx.section.num_samples_for_phase_1))
    return _amp_config_class()(candidates=tuple(label.split("/")), num_samples_for_phase_1=phase1)


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
        forward_pass_callback=ctx.feed,
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


def _run(ctx: RunContext, state: StageState, stage: Any) -> None:
    """AMP on the stage's sim, or the choice the study recorded for this prefix."""
    assert state.sim is not None
    record = state.record
    if record is not None and isinstance(record.get("choice"), dict):
        replay_amp(state.sim, record["choice"])
        state.note, state.choice = f"AMP config from the study ({record.get('note', '')})", record["choice"]
        return
    state.sim, state.amp_result, state.note = amp_stage(ctx, state.sim, stage.config, state.previous_full)
    # AMP scored its choice in full (phase 2 on every sample): that is the stage's score, not measured again
    if getattr(stage.config, "num_samples_for_phase_2", None) is None:
        state.known_score = state.amp_result.accuracy
    state.known_full = True
    state.choice = dict(state.amp_result.config)


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
        in_every_space=True,
        parse_section=_parse,
        section_to_yaml=_to_yaml,
        suggest=_suggest,
        run=_run,
        describe_config=lambda c: f"amp({'/'.join(c.candidates)})",
        usable=_usable,
        prune_before=False,
    )
)
