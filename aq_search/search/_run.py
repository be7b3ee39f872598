"""Running a pipeline: apply its stages one by one, score each, keep the best, record what each cost.

Every stage records its wall time, eval calls, eval samples and eval-equivalents (samples / the full
evaluation's size; a full evaluation counts 1), its gain over the stage before it, and its cost in BOPs
relative to the requested configuration. The run's result is its best stage (see :mod:`._keepbest`);
a stage whose prefix was already scored in the study takes its score from there (see :mod:`._prefix`).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from typing import Any

from .._errors import AQSearchError
from ..quantsim import QuantSim
from ..techniques._registry import registered_techniques
from ._fidelity import could_meet
from ._keepbest import KeepBest, Kept
from ._pipeline import (
    Pipeline,
    PipelineRun,
    RunContext,
    SchemeConfig,
    SchemeSelectConfig,
    StageError,
    StageResult,
    _model_stage,
    _select_scheme,
)
from ._prefix import KnownScores, prefix_keys

__all__ = ["meter", "prefix_context", "run_stages", "stage_label"]

logger = logging.getLogger(__name__)

#: ``on_stage(index, result) -> bool``: return True to finish the pipeline now (target met).
StageCallback = Callable[[int, StageResult], bool]


def meter(ctx: RunContext) -> tuple[int, int, float]:
    """``(eval calls, eval samples, eval-equivalents)`` so far, from the context's counting evaluator."""
    ev = ctx.evaluate
    return int(getattr(ev, "calls", 0)), int(getattr(ev, "samples", 0)), float(getattr(ev, "equivalents", 0.0))


def prefix_context(ctx: RunContext) -> dict[str, Any]:
    """The settings besides the stages that change what a pipeline prefix produces."""
    budget = ctx.budget
    return {
        "default_pair": ctx.default_pair,
        "default_per_channel": ctx.default_per_channel,
        "param_bw": ctx.param_bw,
        "output_bw": ctx.output_bw,
        "seed": ctx.seed,
        "max_relative_bops": getattr(budget, "max_relative_bops", None),
    }


def _score(ctx: RunContext, sim: QuantSim, known: float | None = None, known_full: bool = False) -> tuple[float, int | None]:
    """The stage's score on ``intermediate_num_samples`` (``known`` when already measured), confirmed
    on the full evaluation when its upper confidence bound reaches the target (see :mod:`._fidelity`)."""
    if known is not None and known_full:
        return known, None
    n = ctx.intermediate_num_samples
    score = ctx.evaluate(sim.model, n) if known is None else known
    if n is not None and could_meet(score, n, ctx.target, ctx.fp32_accuracy - ctx.target):
        return ctx.evaluate(sim.model, None), None  # its confidence bound reaches the target: confirm in full
    return score, n


def _sim_stage(ctx: RunContext, sim: QuantSim, stage: Any, record: dict[str, Any] | None, previous: float | None) -> Any:
    """Apply a stage acting on the sim; returns ``(sim, amp_result, note, known score, choice)``."""
    from ..techniques import apply_adaround, correct_bias

    if stage.key == "adaround":
        sim = apply_adaround(
            sim, ctx.calibration, stage.config, forward_fn=ctx.forward_fn, cache=ctx.adaround_cache, seed=ctx.seed
        )
        return sim, None, "", None, None
    if stage.key == "bc":
        return correct_bias(sim, ctx.calibration, stage.config, forward_fn=ctx.forward_fn), None, "", None, None
    spec = registered_techniques()[stage.key]
    if spec.generic and spec.apply is not None:
        return spec.apply(sim, ctx.calibration, stage.config, forward_fn=ctx.forward_fn), None, "", None, None
    from ._ampstage import amp_stage, replay_amp

    if record is not None and isinstance(record.get("choice"), dict):
        replay_amp(sim, record["choice"])
        return sim, None, f"AMP config from the study ({record.get('note', '')})", None, record["choice"]
    sim, amp_result, note = amp_stage(ctx, sim, stage.config, previous)
    # AMP scored its choice in full (phase 2 on every sample): that is the stage's score, not measured again
    known = amp_result.accuracy if getattr(stage.config, "num_samples_for_phase_2", None) is None else None
    return sim, amp_result, note, known, dict(amp_result.config)


def run_stages(ctx: RunContext, pipeline: Pipeline, on_stage: StageCallback | None = None) -> PipelineRun:
    """See :func:`aq_search.search.run_pipeline`."""
    model = ctx.model
    pair, per_channel = ctx.default_pair, ctx.default_per_channel
    sim: QuantSim | None = None
    results: list[StageResult] = []
    amp_result = None
    keep = KeepBest()
    keys = prefix_keys(pipeline.stages, prefix_context(ctx))
    known: KnownScores | None = ctx.known
    previous: float | None = None
    previous_full: float | None = None  # the previous stage's score when it was a full evaluation
    completed_early = False
    for index, stage in enumerate(pipeline.stages):
        start = time.perf_counter()
        calls0, samples0, eq0 = meter(ctx)
        note = ""
        known_score: float | None = None  # a score of this very sim already measured in this stage
        choice: Any = None
        record = known.get(keys[index], ctx.intermediate_num_samples) if known is not None else None
        try:
            if registered_techniques()[stage.key].acts_on == "model":
                model = _model_stage(ctx, model, stage)
                sim = None
            elif isinstance(stage.config, SchemeConfig):
                pair, per_channel = stage.config.pair, stage.config.per_channel
                sim = None
            elif isinstance(stage.config, SchemeSelectConfig):
                per_channel = stage.config.per_channel
                if record is not None and isinstance(record.get("choice"), str):
                    pair = record["choice"]
                    sim = ctx.calibrated_sim(model, pair, per_channel)
                    note = str(record.get("note", ""))
                else:
                    pair, sim, note, known_score = _select_scheme(ctx, model, stage.config)
                choice = pair
            else:
                if sim is None:
                    sim = ctx.calibrated_sim(model, pair, per_channel)
                elif keep.holds(sim):
                    sim = copy.deepcopy(sim)  # the kept best model must not change under the next stage
                sim, stage_amp, note, known_score, choice = _sim_stage(ctx, sim, stage, record, previous_full)
                amp_result = stage_amp if stage_amp is not None else amp_result
            if sim is None:
                sim = ctx.calibrated_sim(model, pair, per_channel)
        except AQSearchError as err:
            raise StageError(f"stage {index + 1} ({stage.describe()}) failed: {err}") from err
        except Exception as err:
            logger.debug("stage %s failed", stage.key, exc_info=True)
            raise StageError(f"stage {index + 1} ({stage.describe()}) failed: {type(err).__name__}: {err}") from err
        if record is not None:
            score = float(record["score"])
            samples = record.get("num_samples")
            samples = int(samples) if samples is not None else None
        else:
            score, samples = _score(ctx, sim, known_score, known_full=stage.key == "amp")
        relative = ctx.budget.relative(sim) if ctx.budget is not None else None
        within = ctx.budget.allows(relative) if ctx.budget is not None else True
        calls1, samples1, eq1 = meter(ctx)
        result = StageResult(
            stage.key,
            score,
            samples,
            time.perf_counter() - start,
            calls1 - calls0,
            note,
            eval_samples=samples1 - samples0,
            eval_equivalents=round(eq1 - eq0, 6),
            gain=None if previous is None else score - previous,
            relative_bops=None if relative is None else round(relative, 4),
            within_budget=within,
            from_study=record is not None,
            prefix_key=keys[index],
            choice=choice,
        )
        results.append(result)
        if known is not None and record is None:
            known.add(keys[index], result.to_dict())
        previous = score
        previous_full = score if samples is None else None
        keep.offer(Kept(index, score, samples, within, sim, model, amp_result))
        logger.info(
            "stage %d/%d %s: score %.4f (%.1f s, %.2f eval-equivalents)%s",
            index + 1,
            len(pipeline.stages),
            stage.describe(),
            score,
            result.seconds,
            result.eval_equivalents,
            " [from the study]" if record is not None else "",
        )
        if on_stage is not None and on_stage(index, result):
            completed_early = index < len(pipeline.stages) - 1
            break
    if sim is None:  # no stage at all: the default scheme on the FP32 model
        sim = ctx.calibrated_sim(model, pair, per_channel)
        score, samples = _score(ctx, sim)
        keep.offer(Kept(-1, score, samples, True, sim, model))
    pending = keep.to_confirm()
    if pending is not None:  # the best subset score could beat every full one: confirm it in full
        start = time.perf_counter()
        calls0, samples0, eq0 = meter(ctx)
        pending.score = ctx.evaluate(pending.sim.model, None)
        pending.num_samples = None
        if 0 <= pending.index < len(results):
            r = results[pending.index]
            calls1, samples1, eq1 = meter(ctx)
            r.score, r.num_samples = pending.score, None
            r.seconds += time.perf_counter() - start
            r.eval_calls += calls1 - calls0
            r.eval_samples += samples1 - samples0
            r.eval_equivalents = round(r.eval_equivalents + eq1 - eq0, 6)
            r.note = (r.note + "; " if r.note else "") + "confirmed on the full evaluation"
            if known is not None:
                known.records[r.prefix_key] = r.to_dict()
        keep.offer(pending)
    best = keep.best()
    assert best is not None
    for i, r in enumerate(results):
        r.best = i == best.index
    return PipelineRun(
        pipeline,
        best.sim,
        best.model,
        results,
        best.score,
        completed_early=completed_early,
        amp_result=amp_result,
        best_index=best.index,
        within_budget=best.within_budget,
    )


def stage_label(run: PipelineRun) -> str:
    """``"stage 3 of 5 (adaround(...))"``: which stage of the run produced its result."""
    if run.best_index < 0 or not run.pipeline.stages:
        return "no stage (default scheme)"
    stage = run.pipeline.stages[run.best_index]
    return f"stage {run.best_index + 1} of {len(run.pipeline.stages)} ({stage.describe()})"
