"""The Optuna objective of :class:`~aq_search.AutoQuant`: one trial = one pipeline, reported stage by stage.

``AutoQuant.objective`` is an instance of :class:`TrialObjective`, so a user may drive the study
themselves (``study.optimize(aq.objective, callbacks=[...])``); :meth:`AutoQuant.optimize` uses the
same object.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from .._errors import AQSearchError, EvalCallbackError
from .._side_effects import guarded
from ..quantsim import QuantSim
from ..techniques._registry import registered_techniques
from ._aimet_flow import FLOW_ATTR, aimet_after_stage, full_evaluations
from ._budget import layer_bits
from ._counting import CountingEval
from ._observers import trial_callbacks
from ._pipeline import Pipeline, PipelineRun, RunContext, StageError, StageResult, run_pipeline
from ._prefix import PREFIX_ATTR, KnownScores
from ._run import stage_label
from ._storage import WORKER_ATTR, fail_dead_local_trials, worker_id

if TYPE_CHECKING:
    from ._autoquant import AutoQuant

__all__ = ["TRIAL_ENCODINGS", "TrialObjective", "trial_folder"]

logger = logging.getLogger(__name__)

TARGET_ATTR = "target_met_by"


def may_prune_after(pipeline: Pipeline, index: int) -> bool:
    """Whether a trial may be pruned after stage ``index``: not after its last stage, and not while a stage
    whose technique is registered with ``prune_before=False`` is still to come (``amp``: mixed precision can
    recover any score before it, so scores before it say little about where the trial ends)."""
    later = pipeline.stages[index + 1 :]
    specs = registered_techniques()
    return bool(later) and all(specs[stage.key].prune_before for stage in later)


def write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """Write ``path`` whole through a temporary file, then rename it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def within(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a finished trial's result is within the cost budget (trials from before budgets: yes)."""
    return trial.user_attrs.get("within_budget", True) is not False


def target_met_by(study: optuna.Study) -> int | None:
    """The number of the trial that met the target, or ``None``."""
    value = study.user_attrs.get(TARGET_ATTR)
    return int(value) if value is not None else None


class TrialObjective:
    """``objective(trial) -> float``: builds the trial's pipeline, runs it and records it on the trial.

    Use it through :attr:`AutoQuant.objective`. Called on a study that :meth:`AutoQuant.setup_study`
    has not prepared, it prepares the context lazily on the first trial (FP32 evaluation, identity,
    target). :meth:`after_trial` is the callback that marks the study once a trial meets the target
    and stops it; :meth:`AutoQuant.optimize` passes it, a user driving the study may too.
    """

    def __init__(self, aq: AutoQuant, ctx: RunContext | None = None, *, progress: bool = True) -> None:
        self.aq = aq
        self._ctx = ctx
        self.best_run: PipelineRun | None = None
        self.best_number = -1
        self.best_value = -math.inf
        self.best_rank: tuple[bool, float] = (False, -math.inf)  # (within budget, score), as _finish ranks trials
        self.worker = worker_id()
        self.progress = progress
        self._bar: Any = None
        #: ``callback(trial, run, objective)`` at the end of each trial (see :mod:`._observers`)
        self.trial_callbacks = trial_callbacks()

    @property
    def ctx(self) -> RunContext:
        """The run context (model, calibration data, target), prepared on first use."""
        if self._ctx is None:
            self._ctx = self.aq._context()
        return self._ctx

    def _progress(self, study: optuna.Study) -> None:
        if not self.progress:
            return
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(desc="aq-search trials", unit="trial", leave=False)
        self._bar.update(1)
        best = study.user_attrs.get("best_value")
        if best is not None:
            self._bar.set_postfix(best=f"{best:.4f}", target=f"{self.ctx.target:.4f}")

    def close(self) -> None:
        """Close the progress bar, if one was opened."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __call__(self, trial: optuna.Trial) -> float:
        ctx = self.ctx
        study = trial.study
        if math.isnan(ctx.target):  # study.optimize(aq.objective) without a set-up call
            self.aq.setup_study(study=study)
        trial.set_user_attr(WORKER_ATTR, self.worker)
        retried = study.get_trials(deepcopy=False)[trial.number].system_attrs.get("failed_trial")
        if retried is not None:  # a retry of a trial whose worker died (heartbeat expired / process gone)
            trial.set_user_attr("retry_of", int(retried))
        if target_met_by(study) is not None:
            trial.set_user_attr("stopped", f"target already met by trial {target_met_by(study)}")
            study.stop()
            raise optuna.TrialPruned("target already met")
        counter = ctx.evaluate
        assert isinstance(counter, CountingEval)
        calls0, samples0, eval_s0, eq0 = counter.calls, counter.samples, counter.seconds, counter.equivalents
        ctx.known = KnownScores.from_trials(study.get_trials(deepcopy=False))
        hits0 = dict(ctx.cache_hits)
        start = time.perf_counter()

        def record(stages: list[StageResult] | None = None) -> None:
            trial.set_user_attr("eval_calls", counter.calls - calls0)
            trial.set_user_attr("eval_samples", counter.samples - samples0)
            trial.set_user_attr("eval_equivalents", round(counter.equivalents - eq0, 6))
            trial.set_user_attr("eval_seconds", round(counter.seconds - eval_s0, 3))
            trial.set_user_attr("wall_seconds", round(time.perf_counter() - start, 3))
            trial.set_user_attr("cache_hits", {k: v - hits0.get(k, 0) for k, v in ctx.cache_hits.items() if v - hits0.get(k, 0)})
            if stages is not None:
                trial.set_user_attr("stage_scores", [s.to_dict() for s in stages])
                trial.set_user_attr(PREFIX_ATTR, [s.prefix_key for s in stages])

        try:
            pipeline = self.aq._pipeline_for(trial, ctx)
        except AQSearchError as err:
            trial.set_user_attr("error", str(err))
            record()
            raise
        trial.set_user_attr("pipeline", str(pipeline))
        trial.set_user_attr("ordering", pipeline.ordering)
        specs = registered_techniques()
        trial.set_user_attr("stage_cost_classes", [specs[stage.key].cost for stage in pipeline.stages])
        seen: list[StageResult] = []
        aimet = trial.user_attrs.get(FLOW_ATTR) == "aimet"  # the reference trial runs AIMET's own flow

        def on_stage(index: int, result: StageResult) -> bool:
            seen.append(result)
            record(seen)
            if math.isnan(result.score):
                return False  # not evaluated (lazy stage scoring): nothing to report, prune or stop on
            trial.report(result.score, step=index)
            if aimet and (decided := aimet_after_stage(trial, ctx, pipeline, index, result)) is not None:
                return decided  # AIMET's own flow: the W32 check and its early exit (see _aimet_flow.py)
            if result.num_samples is None and result.score >= ctx.target and result.within_budget:
                return True  # target met within the cost budget: finish with the stages applied so far
            if target_met_by(study) is not None:
                trial.set_user_attr("stopped", f"target met by trial {target_met_by(study)}")
                raise optuna.TrialPruned("target met by another trial")
            if may_prune_after(pipeline, index) and trial.should_prune():
                trial.set_user_attr("pruned_at_stage", f"{index + 1}: {pipeline.stages[index].describe()}")
                raise optuna.TrialPruned(f"pruned after stage {index + 1} ({result.score:.4f})")
            return False

        try:
            with full_evaluations(ctx) if aimet else contextlib.nullcontext():
                run = run_pipeline(ctx, pipeline, on_stage)
        except StageError as err:
            trial.set_user_attr("error", str(err))
            record(seen)
            logger.warning("trial %d failed: %s", trial.number, err)
            raise
        except EvalCallbackError as err:
            trial.set_user_attr("error", f"eval callback: {err}")
            record(seen)
            raise
        record(run.stages)
        # keep-best: the trial's value and model are its best stage's; stages_applied rebuilds it on replay
        trial.set_user_attr("stages_applied", run.best_index + 1)
        trial.set_user_attr("stages_run", len(run.stages))
        trial.set_user_attr("best_stage", run.best_index + 1)
        trial.set_user_attr("best_stage_label", stage_label(run))
        trial.set_user_attr("last_stage_score", run.stages[-1].score if run.stages else run.score)
        trial.set_user_attr("pipeline_applied", str(run.applied))
        trial.set_user_attr("completed_early", run.completed_early)
        trial.set_user_attr("relative_bops", _relative_bops(run))
        relative = self.aq.budget.relative(run.sim)
        trial.set_user_attr("relative_bops_requested", None if relative is None else round(relative, 4))
        trial.set_user_attr("within_budget", run.within_budget)
        trial.set_user_attr("scheme", f"{run.sim.param_quant_scheme.name}/{run.sim.activation_quant_scheme.name}")
        enc_path = guarded(trial, "writing its encodings", lambda: _write_encodings(run.sim, self.aq.results_dir, trial.number))
        if enc_path is not None:  # a failed write is recorded on the trial (side_effect_errors); the score stands
            trial.set_user_attr("encodings_path", str(enc_path))
        if (run.within_budget, run.score) > self.best_rank:
            self.best_rank, self.best_value = (run.within_budget, run.score), run.score
            self.best_number, self.best_run = trial.number, run
        for callback in self.trial_callbacks:  # dashboard records and artifacts (aq_search.viz), a user's own
            callback(trial, run, self)
        return run.score

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna callback: mark the study when a trial met the target (and stop it), update the progress bar."""
        if trial.state == optuna.trial.TrialState.COMPLETE and trial.value is not None:
            # set only once the trial is COMPLETE, so every worker that sees it can also use the trial
            if trial.value >= self.ctx.target and within(trial) and target_met_by(study) is None:
                study.set_user_attr(TARGET_ATTR, trial.number)
            best = study.user_attrs.get("best_value")
            if best is None or trial.value > best:
                study.set_user_attr("best_value", trial.value)
        self._progress(study)
        if target_met_by(study) is not None:
            study.stop()
        else:
            self._maybe_redraw(study, trial)
            storage = self.aq._storage_of(study)
            if storage is not None:
                fail_dead_local_trials(study, storage, self.aq.max_retries)

    def _maybe_redraw(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Queue another AdaRound draw of ``trial`` when it is a near miss (see :mod:`._redraw`)."""
        from ._redraw import enqueue_redraw, near_miss_margin, plan_redraw  # _redraw uses this module's within()

        redraws = self.aq.space.adaround_redraws
        user = self.aq._adaround_params
        if not redraws or (user is not None and getattr(user, "seed", None) is not None):
            return  # off in this space, or the user fixed AdaRound's seed
        ctx = self.ctx
        margin = near_miss_margin(ctx.target, self.aq.eval_size, ctx.fp32_accuracy - ctx.target)
        attrs = plan_redraw(
            study.get_trials(deepcopy=False),
            trial,
            target=ctx.target,
            margin=margin,
            max_redraws=redraws,
            base_seed=ctx.seed,
        )
        if attrs is not None:
            enqueue_redraw(study, trial, attrs)


#: A trial's encodings in its folder, written when it completes, before the trial callbacks record its charts.
TRIAL_ENCODINGS = "encodings.json"


def trial_folder(results_dir: str | os.PathLike[str], number: int) -> Path:
    """``results_dir/trials/trial_NNNN``: where a trial's encodings (and, from ``aq_search.viz``, its AMP
    summary and charts) are written."""
    return Path(results_dir) / "trials" / f"trial_{number:04d}"


def _write_encodings(sim: QuantSim, results_dir: Path, number: int) -> Path:
    """``results_dir/trials/trial_NNNN/encodings.json``: a trial's encodings."""
    folder = trial_folder(results_dir, number)
    folder.mkdir(parents=True, exist_ok=True)
    sim.export_encodings(folder / TRIAL_ENCODINGS)
    return folder / TRIAL_ENCODINGS


def relative_bops(sim: QuantSim) -> float | None:
    """Bit operations of ``sim`` relative to the same model with every layer at W8A8.

    BOPs of a layer = MACs x weight bits x input-activation bits (a float tensor counts 32 bits).
    """
    layers = layer_bits(sim)
    total = sum(layer.macs * layer.param_bits * layer.input_bits for layer in layers)
    reference = sum(layer.macs * 64 for layer in layers)
    return total / reference if reference else None


def _relative_bops(run: PipelineRun) -> float | None:
    try:
        value = relative_bops(run.sim)
    except Exception:
        logger.debug("relative BOPs unavailable", exc_info=True)
        return None
    return None if value is None else round(value, 4)
