"""Running a pipeline: apply its stages one by one, score each, keep the best, record what each cost.

Every stage records its wall time, eval calls, eval samples and eval-equivalents (samples / the full
evaluation's size; a full evaluation counts 1), its gain over the stage before it, and its cost in BOPs
relative to the requested configuration. The run's result is its best stage (see :mod:`._keepbest`);
a stage whose prefix was already scored in the study takes its score from there (see :mod:`._prefix`).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from typing import Any

import torch.fx as fx

from .._errors import AQSearchError
from ..quantsim import QuantSim
from ..techniques._registry import registered_techniques
from ._context import StageState, model_fingerprint
from ._fidelity import could_meet
from ._keepbest import KeepBest, Kept
from ._pipeline import Pipeline, PipelineRun, RunContext, Stage, StageCallback, StageError, StageResult
from ._prefix import KnownScores, prefix_keys

__all__ = ["meter", "prefix_context", "run_stages", "stage_label"]

logger = logging.getLogger(__name__)


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


def _model_stage(ctx: RunContext, model: fx.GraphModule, stage: Stage) -> fx.GraphModule:
    """``apply(model, dummy_input, config)``, cached by the model's content and the config."""
    key = hashlib.sha256(f"{model_fingerprint(model)}|{stage.key}|{stage.config.to_dict()}".encode()).hexdigest()
    cached = ctx.model_cache.get_item(key)
    if cached is not None:
        ctx.hit(stage.key)
        return copy.deepcopy(cached)
    apply = registered_techniques()[stage.key].apply
    assert apply is not None
    out = apply(model, ctx.dummy_input, stage.config)
    ctx.model_cache.put(key, copy.deepcopy(out))
    return out


def _sim_stage(ctx: RunContext, state: StageState, stage: Stage) -> None:
    """``apply(sim, calibration, config, forward_fn=..., **run_kwargs)`` on the state's sim."""
    spec = registered_techniques()[stage.key]
    assert spec.apply is not None
    kwargs = {name: getattr(ctx, attr) for name, attr in spec.run_kwargs.items()}
    state.sim = spec.apply(state.sim, ctx.calibration, stage.config, forward_fn=ctx.forward_fn, **kwargs)


def _run_stage(ctx: RunContext, state: StageState, stage: Stage, keep: KeepBest) -> None:
    """Run one stage as its technique's spec says: its ``run`` hook, else its ``apply`` on the model or the sim."""
    spec = registered_techniques()[stage.key]
    if spec.acts_on == "sim":
        if state.sim is None:
            state.sim = ctx.calibrated_sim(state.model, state.pair, state.per_channel)
        elif keep.holds(state.sim):
            state.sim = copy.deepcopy(state.sim)  # the kept best model must not change under the next stage
        (spec.run or _sim_stage)(ctx, state, stage)
    elif spec.run is not None:
        spec.run(ctx, state, stage)
    else:
        state.model, state.sim = _model_stage(ctx, state.model, stage), None
    if state.sim is None:
        state.sim = ctx.calibrated_sim(state.model, state.pair, state.per_channel)


def run_stages(ctx: RunContext, pipeline: Pipeline, on_stage: StageCallback | None = None) -> PipelineRun:
    """See :func:`aq_search.search.run_pipeline`."""
    state = StageState(ctx.model, ctx.default_pair, ctx.default_per_channel)
    results: list[StageResult] = []
    keep = KeepBest()
    keys = prefix_keys(pipeline.stages, prefix_context(ctx))
    known: KnownScores | None = ctx.known
    previous: float | None = None
    previous_full: float | None = None  # the previous stage's score when it was a full evaluation
    completed_early = False
    for index, stage in enumerate(pipeline.stages):
        start = time.perf_counter()
        calls0, samples0, eq0 = meter(ctx)
        record = known.get(keys[index], ctx.intermediate_num_samples) if known is not None else None
        state.begin(record, previous_full)
        try:
            _run_stage(ctx, state, stage, keep)
        except AQSearchError as err:
            raise StageError(f"stage {index + 1} ({stage.describe()}) failed: {err}") from err
        except Exception as err:
            logger.debug("stage %s failed", stage.key, exc_info=True)
            raise StageError(f"stage {index + 1} ({stage.describe()}) failed: {type(err).__name__}: {err}") from err
        sim = state.sim
        assert sim is not None
        if record is not None:
            score = float(record["score"])
            samples = record.get("num_samples")
            samples = int(samples) if samples is not None else None
        else:
            score, samples = _score(ctx, sim, state.known_score, known_full=state.known_full)
        relative = ctx.budget.relative(sim) if ctx.budget is not None else None
        within = ctx.budget.allows(relative) if ctx.budget is not None else True
        calls1, samples1, eq1 = meter(ctx)
        result = StageResult(
            stage.key,
            score,
            samples,
            time.perf_counter() - start,
            calls1 - calls0,
            state.note,
            eval_samples=samples1 - samples0,
            eval_equivalents=round(eq1 - eq0, 6),
            gain=None if previous is None else score - previous,
            relative_bops=None if relative is None else round(relative, 4),
            within_budget=within,
            from_study=record is not None,
            prefix_key=keys[index],
            choice=state.choice,
        )
        results.append(result)
        if known is not None and record is None:
            known.add(keys[index], result.to_dict())
        previous = score
        previous_full = score if samples is None else None
        keep.offer(Kept(index, score, samples, within, sim, state.model, state.amp_result))
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
    if not pipeline.stages:  # no stage at all: the default scheme on the FP32 model
        sim = ctx.calibrated_sim(state.model, state.pair, state.per_channel)
        score, samples = _score(ctx, sim)
        keep.offer(Kept(-1, score, samples, True, sim, state.model))
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
        amp_result=state.amp_result,
        best_index=best.index,
        within_budget=best.within_budget,
    )


def stage_label(run: PipelineRun) -> str:
    """``"stage 3 of 5 (adaround(...))"``: which stage of the run produced its result."""
    if run.best_index < 0 or not run.pipeline.stages:
        return "no stage (default scheme)"
    stage = run.pipeline.stages[run.best_index]
    return f"stage {run.best_index + 1} of {len(run.pipeline.stages)} ({stage.describe()})"
