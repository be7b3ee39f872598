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
import math
import time
from collections.abc import Sequence
from typing import Any

import torch.fx as fx

from .._errors import AQSearchError
from ..quantsim import QuantSim
from ..techniques._registry import registered_techniques
from ._context import StageState, model_fingerprint
from ._fidelity import could_meet, worth_confirming
from ._keepbest import KeepBest, Kept
from ._pipeline import Pipeline, PipelineRun, RunContext, Stage, StageCallback, StageError, StageResult
from ._prefix import KnownScores, prefix_keys
from ._screen import Candidate, Screened, clear_miss, defers, predicted_miss, proxy_sqnr, screen, undo_if_worse

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


def _score(
    ctx: RunContext,
    sim: QuantSim,
    known: float | None = None,
    known_full: bool = False,
    prior: float | None = None,
    last: bool = True,
) -> tuple[float, int | None]:
    """The stage's score on ``intermediate_num_samples`` (``known`` when already measured), confirmed
    on the full evaluation when it is worth it (see :func:`._fidelity.worth_confirming`: two standard
    errors from the target for the pipeline's ``last`` stage, one for a stage that more stages follow).

    Under lazy scoring, ``prior`` (what the stage's input scored, in full or on the subset) decides the
    fidelity first: when it is already within the subset's noise of the target, a subset screen of the
    stage would be confirmed in full anyway (one call more for the same answer), so the stage goes straight
    to the full evaluation.
    """
    if known is not None and known_full:
        return known, None
    n = ctx.intermediate_num_samples
    margin = ctx.fp32_accuracy - ctx.target
    if known is None and n is not None and ctx.lazy_scoring and prior is not None and could_meet(prior, n, ctx.target, margin):
        return ctx.evaluate(sim.model, None), None
    score = ctx.evaluate(sim.model, n) if known is None else known
    if n is not None and worth_confirming(score, n, ctx.target, margin, last):
        return ctx.evaluate(sim.model, None), None  # close enough to the target: confirm in full
    return score, n


def _within_budget(ctx: RunContext, sim: QuantSim) -> bool:
    """Whether ``sim`` fits the study's BOPs budget (always, without one)."""
    return ctx.budget.allows(ctx.budget.relative(sim)) if ctx.budget is not None else True


def _noted(note: str | None, more: str) -> str:
    """``note`` with ``more`` appended (``"; "`` between them)."""
    return (note + "; " if note else "") + more


def _screen_stage(
    ctx: RunContext, state: StageState, index: int, stage_key: str, sim: QuantSim, deferred: list[Candidate], last: bool
) -> list[Screened]:
    """Score stage ``index``: alone as before, or screened with the deferred stages and near-tie scheme
    pairs (see :mod:`._screen`); a scheme pair the eval prefers becomes the stage's choice. Returns nothing
    when the study predicts every candidate misses and more stages follow (:func:`._screen.predicted_miss`)."""
    if not deferred and not state.alternatives:
        alone, samples = _score(ctx, sim, state.known_score, known_full=state.known_full, prior=state.prior, last=last)
        return [Screened(Candidate(index, sim, state.model, None, current=True), alone, samples)]
    current = Candidate(index, sim, state.model, proxy_sqnr(ctx, sim), state.pair, state.known_score, state.known_full, True)
    state.proxy = current.sqnr
    ties = [Candidate(index, alt, state.model, value, pair, current=True) for pair, alt, value in state.alternatives]
    # a scheme stage only sets the pair: a deferred stage with its model and one of its pairs is the same sim
    same = {c.pair for c in (current, *ties)} if registered_techniques()[stage_key].acts_on == "scheme" else set()
    candidates = [current, *ties, *(c for c in deferred if c.sim is not sim and not (c.model is state.model and c.pair in same))]
    if not last:
        record = predicted_miss(ctx, candidates)
        if record is not None:
            top = max(float(c.sqnr or 0.0) for c in candidates)
            samples = record.get("num_samples")
            state.predicted = float(record["score"])
            state.note = _noted(
                state.note,
                "not evaluated: predicted to miss (a model of this study with a higher output SQNR, "
                f"{float(record['proxy']):.1f} vs {top:.1f} dB, scored {float(record['score']):.4f}"
                f"{'' if samples is None else f' on {samples} samples'} against the target {ctx.target:.4f})",
            )
            return []

    def score(c: Candidate) -> tuple[float, int | None]:
        prior = state.prior if c is current else None
        return _score(ctx, c.sim, c.known, known_full=c.known_full, prior=prior, last=last)

    def within(s: QuantSim) -> bool:
        return _within_budget(ctx, s)

    screened = screen(ctx, candidates, score, within, last)
    mine = [s for s in screened if s.candidate.current]
    if len(mine) > 1:  # near-tie scheme pairs: the eval's best is the stage's result and choice
        tried = ", ".join(f"{s.candidate.pair}={s.score:.4f}" for s in mine)
        best = max(mine, key=lambda s: (within(s.candidate.sim), s.num_samples is None, s.score))
        state.sim, state.pair, state.choice = best.candidate.sim, str(best.candidate.pair), best.candidate.pair
        state.proxy = best.candidate.sqnr
        tie = f"SQNR near-tie broken by eval: {tried}, kept {best.candidate.pair}"
        state.note = _noted(state.note, tie)
        screened = [s for s in screened if not s.candidate.current or s is best]
    return screened


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


def _run_stage(ctx: RunContext, state: StageState, stage: Stage, keep: KeepBest, deferred: Sequence[Candidate] = ()) -> None:
    """Run one stage as its technique's spec says: its ``run`` hook, else its ``apply`` on the model or the sim."""
    spec = registered_techniques()[stage.key]
    if spec.acts_on == "sim":
        if state.sim is None:
            state.sim = ctx.calibrated_sim(state.model, state.pair, state.per_channel)
        elif keep.holds(state.sim) or any(c.sim is state.sim for c in deferred):
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
    prior: float | None = None  # what the next stage's input is estimated to score (full or subset)
    deferred: list[Candidate] = []  # stages not evaluated yet (lazy scoring, see _screen)
    completed_early = False
    for index, stage in enumerate(pipeline.stages):
        start = time.perf_counter()
        calls0, samples0, eq0 = meter(ctx)
        record = known.get(keys[index], ctx.intermediate_num_samples) if known is not None else None
        state.begin(record, previous_full, prior)
        try:
            _run_stage(ctx, state, stage, keep, deferred)
        except AQSearchError as err:
            raise StageError(f"stage {index + 1} ({stage.describe()}) failed: {err}") from err
        except Exception as err:
            logger.debug("stage %s failed", stage.key, exc_info=True)
            raise StageError(f"stage {index + 1} ({stage.describe()}) failed: {type(err).__name__}: {err}") from err
        undone = undo_if_worse(ctx, stage.key, state, deferred, index, [s.key for s in pipeline.stages[index + 1 :]])
        sim = state.sim
        assert sim is not None
        screened: list[Screened] = []
        if record is not None:
            score = float(record["score"])
            samples = record.get("num_samples")
            samples = int(samples) if samples is not None else None
            state.proxy = record.get("proxy")
            if defers(ctx, pipeline.stages, index, False) and not undone:
                # it would wait for the next stage's screen: it joins that screen with its known score (no eval
                # call), so the screen, and CLE's undo check after it, decide as in the trial that scored it
                deferred.append(Candidate(index, sim, state.model, proxy_sqnr(ctx, sim), state.pair, score, samples is None))
        elif defers(ctx, pipeline.stages, index, False):  # lazy: the next stage is cheap (see _screen)
            if not undone:  # an undone stage's sim is the deferred one before it
                deferred.append(Candidate(index, sim, state.model, proxy_sqnr(ctx, sim), state.pair))
                state.proxy = deferred[-1].sqnr
            score, samples = math.nan, 0
            state.note = _noted(state.note, "not evaluated (the next stage is cheap)")
        else:
            screened = _screen_stage(ctx, state, index, stage.key, sim, deferred, index == len(pipeline.stages) - 1)
            deferred = []
            sim = state.sim
            assert sim is not None
            mine = next((s for s in screened if s.candidate.current), None)
            score, samples = (mine.score, mine.num_samples) if mine is not None else (math.nan, 0)
            if state.proxy is None and clear_miss(ctx, score, samples):  # a record later screens can predict from
                state.proxy = proxy_sqnr(ctx, sim)
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
            gain=None if previous is None or math.isnan(score) else score - previous,
            relative_bops=None if relative is None else round(relative, 4),
            within_budget=within,
            from_study=record is not None,
            prefix_key=keys[index],
            choice=state.choice,
            proxy=None if state.proxy is None else round(float(state.proxy), 3),
        )
        results.append(result)
        if known is not None and record is None and not math.isnan(score):
            known.add(keys[index], result.to_dict())
        met_earlier = False
        for s in screened:  # deferred stages scored at this stage's screen: their records and keep-best
            c = s.candidate
            if c.current:
                continue
            r = results[c.index]
            r.score, r.num_samples = s.score, s.num_samples
            r.proxy = None if c.sqnr is None else round(float(c.sqnr), 3)
            r.note = f"scored at stage {index + 1}'s screen (its eval calls are counted there)"
            if known is not None:
                known.records[r.prefix_key] = r.to_dict()
            c_within = _within_budget(ctx, c.sim)
            keep.offer(Kept(c.index, s.score, s.num_samples, c_within, c.sim, c.model))
            met_earlier |= s.num_samples is None and s.score >= ctx.target and c_within
        previous = None if math.isnan(score) else score  # the next stage's input: its gain and AMP's floor
        previous_full = score if samples is None else None
        if not math.isnan(score):
            prior = score
        elif screened:  # the stage itself went unscored at its screen: the best model screened stands in
            prior = max(s.score for s in screened)
        else:  # deferred (None), or predicted to miss: the predicting record's score
            prior = state.predicted
        if not math.isnan(score):
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
        if met_earlier:  # an earlier (deferred) stage met the target at this screen: done
            completed_early = index < len(pipeline.stages) - 1
            break
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
            r.note = _noted(r.note, "confirmed on the full evaluation")
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
