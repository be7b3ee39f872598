"""AutoQuant: AIMET's fixed PTQ recipe turned into an Optuna search that stops at the target."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from torch import nn

from .._data import check_batch_fits
from .._errors import AQSearchError, EvalCallbackError, InvalidInputError
from ..quantsim import QuantSim, prepare_model
from ..targets import TargetProfile, constrain_space, get_target
from ._aimet_flow import FLOW_ATTR, aimet_adaround, aimet_flow_pipeline
from ._arguments import check_allowed_drop, check_arguments, check_study, materialize
from ._budget import Budget
from ._counting import CountingEval
from ._effort import subset_or_full
from ._objective import TARGET_ATTR, TrialObjective, target_met_by, within
from ._pipeline import (
    Fixed,
    Pipeline,
    PipelineRun,
    RunContext,
    run_pipeline,
    suggest_pipeline,
    usable_orderings,
)
from ._redraw import REDRAW_ATTR, with_adaround_seed
from ._reference import enqueue_reference_trials, reference_adaround, reference_differences, reference_params
from ._result import AutoQuantResult, finish
from ._schedule_budget import TimeBudgetScheduler
from ._space import SearchSpace, load_search_space
from ._storage import fail_dead_local_trials, make_storage, storage_label
from ._study import open_study

__all__ = ["AutoQuant", "AutoQuantResult", "CountingEval"]

logger = logging.getLogger(__name__)


class AutoQuant:
    """Search for the best post-training quantization of ``model`` within an allowed accuracy drop.

    AIMET's AutoQuant runs a fixed recipe (scheme selection, BN folding, CLE, AdaRound). Here the
    recipe is the first trial of an Optuna study; later trials search technique orderings, quant
    schemes, AdaRound hyperparameters and mixed-precision candidates, each trial reporting a score
    after every stage so bad trials are pruned. The study stops as soon as a trial meets
    ``fp32 - allowed_accuracy_drop``; otherwise the best trial scored is returned.

    Args:
        model: the trained FP32 model (not modified).
        dummy_input: one batch, as the model takes it (tensor, tuple of inputs, or dict).
        data_loader: unlabeled calibration batches: a DataLoader or any re-iterable (a list ...).
            A tensor batch is fed as ``model(x)``, a tuple/list as ``model(*x)``, a dict as
            ``model(**x)``; ``forward_fn(model, batch)`` overrides that.
        eval_callback: ``eval_callback(model, num_samples) -> float``, higher is better;
            ``num_samples=None`` is the full evaluation.
        param_bw / output_bw: default weight / activation bit-widths (2..16).
        results_dir: where the study database, caches and the best model go.
        search_space: a built-in name (``default``, ``fast``, ``thorough``), a YAML path or a dict.
        storage: an Optuna storage URL (default ``sqlite:///<results_dir>/study.db``) or storage object.
        study_name: default ``aq-search-<model class>-w<param_bw>a<output_bw>``; an existing study
            of that name is resumed (completed trials are not redone).
        seed: makes the run reproducible (sampler, AdaRound).
        quant_scheme: range setting for ``run_inference`` and for pipelines without a ``scheme`` stage.
        per_channel: per-channel weight quantization (True/False), or ``None`` to let the search choose.
        forward_fn: ``forward_fn(model, batch)`` feeds one batch (defaults as above).
        adaround_params: fixed AdaRound settings (else the space's ranges are searched).
        mixed_precision_candidates: fixed AMP candidates, e.g. ``["w8a8", "w4a8"]``.
        num_calibration_batches: use at most this many batches of ``data_loader``.
        leaf_modules: module classes or names to keep whole when tracing.
        heartbeat_interval: for a storage URL: seconds between heartbeats of a running trial, so a
            trial whose worker was killed is marked failed and retried by another worker (Optuna's
            RDB heartbeat; SQLite included). ``None`` turns it off. Journal storages (``.log``) use a
            same-host process check instead; see ``aq_search/search/_storage.py``.
        grace_period: seconds without a heartbeat before a trial counts as dead (default
            ``2 * heartbeat_interval``).
        max_retries: how often one trial is retried after its worker died (``None``: no limit).
        sampler_seed: seed of the Optuna sampler (default: ``seed``). Worker processes sharing one
            study need different sampler seeds, or they propose the same trials; ``aq-search
            worker`` gives each its own. ``seed`` itself (AdaRound) must stay the same everywhere.
        max_relative_bops: a result may cost at most this many times the BOPs of the model with every
            layer at ``w{param_bw}a{output_bw}`` (default: the space's ``max_relative_bops``, 1.5). A
            model over that budget never meets the target, however accurate.
        eval_size: samples in the full evaluation, so subset calls count as ``num_samples / eval_size``
            eval-equivalents in the records (``None``: each call counts as one full evaluation).
        target: the deployment runtime, ``"generic"`` (default: no constraint), ``"onnxruntime"``,
            ``"tensorrt"`` or ``"qnn"`` (or a :class:`~aq_search.targets.TargetProfile`); default: the
            search space's ``target:`` key. It fixes the activation grid (TensorRT: signed symmetric
            int8), rejects bit-widths the runtime cannot run (e.g. TensorRT W4A8) and keeps only the AMP
            candidates it runs. Rules and sources: ``docs/targets.md``.
        sampler: an Optuna sampler to use instead of the space's (``sampler:`` key); it is used as
            given (not reseeded when a study is resumed).
        pruner: an Optuna pruner to use instead of the space's (``pruner:`` key).
        study: an existing Optuna study (``direction="maximize"``) to run the trials in, instead of
            one opened from ``storage``/``study_name``; its own sampler and pruner are kept unless
            ``sampler=``/``pruner=`` are given.
        artifact_store: an Optuna artifact store (e.g. ``optuna.artifacts.FileSystemArtifactStore``);
            each completed trial's artifacts (encodings, charts) go there instead of ``results_dir/artifacts``.
        progress: show the trial progress bar (tqdm); ``False`` turns it off.

    Driving the study yourself: :meth:`setup_study` opens (or takes) the study and evaluates the
    FP32 model; :attr:`objective` is then the study's objective and :meth:`result` builds the
    :class:`AutoQuantResult`::

        study = aq.setup_study(allowed_accuracy_drop=0.01)
        study.optimize(aq.objective, n_trials=10, callbacks=[aq.objective.after_trial, my_callback])
        result = aq.result(study)

    ``study.optimize(aq.objective)`` on a study that was not set up works too: the first trial
    prepares the context (calibration data, FP32 score, ``allowed_accuracy_drop=0.01``).
    """

    def __init__(
        self,
        model: nn.Module,
        dummy_input: Any,
        data_loader: Any,
        eval_callback: Callable[[nn.Module, int | None], float],
        param_bw: int = 8,
        output_bw: int = 8,
        results_dir: str | os.PathLike[str] = "aq_results",
        search_space: str | os.PathLike[str] | Mapping[str, Any] | SearchSpace = "default",
        storage: str | optuna.storages.BaseStorage | None = None,
        study_name: str | None = None,
        seed: int | None = None,
        *,
        quant_scheme: str = "tf_enhanced",
        per_channel: bool | None = True,
        forward_fn: Callable[[nn.Module, Any], Any] | None = None,
        adaround_params: Any = None,
        mixed_precision_candidates: Sequence[Any] | None = None,
        num_calibration_batches: int | None = None,
        leaf_modules: Sequence[Any] = (),
        heartbeat_interval: int | None = 60,
        grace_period: int | None = None,
        max_retries: int | None = 2,
        sampler_seed: int | None = None,
        max_relative_bops: float | None = None,
        eval_size: int | None = None,
        target: str | TargetProfile | None = None,
        sampler: optuna.samplers.BaseSampler | None = None,
        pruner: optuna.pruners.BasePruner | None = None,
        study: optuna.Study | None = None,
        artifact_store: Any = None,
        progress: bool = True,
    ) -> None:
        check_arguments(
            model=model,
            dummy_input=dummy_input,
            eval_callback=eval_callback,
            forward_fn=forward_fn,
            param_bw=param_bw,
            output_bw=output_bw,
            storage=storage,
            max_relative_bops=max_relative_bops,
            sampler=sampler,
            pruner=pruner,
            study=study,
            artifact_store=artifact_store,
            plain={
                "num_calibration_batches": num_calibration_batches,
                "per_channel": per_channel,
                "heartbeat_interval": heartbeat_interval,
                "grace_period": grace_period,
                "max_retries": max_retries,
                "eval_size": eval_size,
                "progress": progress,
            },
        )
        self.model = model
        self.dummy_input = dummy_input
        self.data_loader = data_loader
        self.eval_callback = eval_callback
        self.param_bw = param_bw
        self.output_bw = output_bw
        self.results_dir = Path(results_dir)
        self.space = load_search_space(search_space)
        #: the deployment target (:mod:`aq_search.targets`)
        self.deployment_target = get_target(target if target is not None else self.space.target)
        self.deployment_target.check_bitwidths(param_bw, output_bw)
        if per_channel is not None and per_channel not in self.deployment_target.per_channel:
            raise InvalidInputError(
                f"target {self.deployment_target.name!r} does not run per_channel={per_channel} weights. "
                f"Fix: per_channel={self.deployment_target.per_channel[0]}."
            )
        self.space = constrain_space(self.space, self.deployment_target, param_bw, output_bw)
        self.storage = storage
        self.study_name = study_name
        self.seed = seed
        self.quant_scheme = quant_scheme
        self.per_channel = per_channel
        self.forward_fn = forward_fn
        self.num_calibration_batches = num_calibration_batches
        self.leaf_modules = tuple(leaf_modules)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.max_retries = max_retries
        self.sampler_seed = sampler_seed
        self.eval_size = eval_size
        self.sampler = sampler
        self.pruner = pruner
        self.study = study
        self.artifact_store = artifact_store
        self.progress = progress
        if max_relative_bops is not None:  # the argument overrides the space's (and so enters the study identity)
            self.space = dataclasses.replace(self.space, max_relative_bops=float(max_relative_bops))
        self.budget = Budget(param_bw, output_bw, self.space.max_relative_bops)
        self._storage_obj: optuna.storages.BaseStorage | None = None
        self._adaround_params: Any = None
        self._amp_candidates: tuple[str, ...] | None = None
        from ..quantsim._range import make_range_estimator

        make_range_estimator(quant_scheme)
        if adaround_params is not None:
            self.set_adaround_params(adaround_params)
        if mixed_precision_candidates is not None:
            self.set_mixed_precision_params(candidates=mixed_precision_candidates)
        self._ctx: RunContext | None = None
        self._eval: CountingEval | None = None
        self._objective: TrialObjective | None = None
        self._allowed_drop = 0.01

    # -- AIMET-familiar setters ---------------------------------------------------------------------
    def set_adaround_params(self, params: Any) -> None:
        """Fix AdaRound's settings for every trial (the same as ``adaround_params=``)."""
        from ..techniques import AdaRoundParams

        if not isinstance(params, AdaRoundParams):
            raise InvalidInputError(
                f"set_adaround_params needs an aq_search.AdaRoundParams. Got {type(params).__name__} instead."
            )
        self._adaround_params = params

    def set_mixed_precision_params(self, candidates: Sequence[Any], **_: Any) -> None:
        """Fix the AMP candidates for every trial (the same as ``mixed_precision_candidates=``)."""
        from ..amp import parse_candidates

        parsed = parse_candidates(candidates, who="set_mixed_precision_params")
        self.deployment_target.check_candidates([c.name for c in parsed])
        self._amp_candidates = tuple(c.name for c in parsed)

    # -- set-up ---------------------------------------------------------------------------------
    def _context(self) -> RunContext:
        if self._ctx is not None:
            return self._ctx
        self.results_dir.mkdir(parents=True, exist_ok=True)
        prepared = prepare_model(self.model, self.dummy_input, leaf_modules=self.leaf_modules)
        batches = materialize(self.data_loader, self.num_calibration_batches)  # read once: a generator works too
        if self.forward_fn is None:
            check_batch_fits(prepared, batches[0])  # labelled (x, y) batches fail here, before any search
        self._eval = CountingEval(self.eval_callback, self.eval_size)
        from ..techniques import AdaRoundCache

        pair = f"{self.quant_scheme}/{self.quant_scheme}"
        self._ctx = RunContext(
            model=prepared,
            dummy_input=self.dummy_input,
            calibration=batches,
            evaluate=self._eval,
            fp32_accuracy=math.nan,
            target=math.nan,
            param_bw=self.param_bw,
            output_bw=self.output_bw,
            default_pair=pair,
            default_per_channel=self.per_channel if self.per_channel is not None else True,
            activation_symmetric=self.deployment_target.activation_symmetric,
            forward_fn=self.forward_fn,
            intermediate_num_samples=subset_or_full(self.space.intermediate_num_samples, self.eval_size),
            adaround_cache=AdaRoundCache(self.results_dir / "cache" / "adaround"),
            seed=self.seed or 0,
            leaf_modules=self.leaf_modules,
            budget=self.budget,
            lazy_scoring=self.space.stage_scoring == "lazy",
            tie_db=self.space.proxy_tie_db,
        )
        return self._ctx

    def _fp32(self, ctx: RunContext) -> float:
        assert self._eval is not None
        try:
            return self._eval(ctx.model, None)
        except EvalCallbackError as err:
            raise EvalCallbackError(f"evaluating the FP32 model failed, so no search was started: {err}") from err

    def run_inference(self) -> tuple[QuantSim, float]:
        """The baseline without search: BatchNorms folded, ``quant_scheme``, default bit-widths.

        Returns:
            ``(sim, accuracy)`` with accuracy from a full evaluation.
        """
        from ..techniques import fold_all_batch_norms

        ctx = self._context()
        folded = fold_all_batch_norms(ctx.model, self.dummy_input)
        sim = ctx.calibrated_sim(folded, ctx.default_pair, ctx.default_per_channel)
        assert self._eval is not None
        return sim, self._eval(sim.model, None)

    # -- the search -----------------------------------------------------------------------------
    def _default_study_name(self) -> str:
        name = f"aq-search-{type(self.model).__name__}-w{self.param_bw}a{self.output_bw}"
        return name if self.deployment_target.is_generic else f"{name}-{self.deployment_target.name}"

    def _storage_spec(self) -> str | os.PathLike[str] | optuna.storages.BaseStorage:
        if self.storage is not None:
            return self.storage
        return f"sqlite:///{(self.results_dir / 'study.db').resolve()}"

    def _storage(self) -> optuna.storages.BaseStorage:
        """The study's storage, built once (heartbeats and retries set up; see :func:`make_storage`)."""
        if self._storage_obj is None:
            spec = self._storage_spec()
            if isinstance(spec, str) and spec.startswith("sqlite:///") and not spec.startswith("sqlite:///:memory:"):
                Path(spec[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
            self._storage_obj = make_storage(
                spec, heartbeat_interval=self.heartbeat_interval, grace_period=self.grace_period, max_retries=self.max_retries
            )
        return self._storage_obj

    def _study_label(self, study: optuna.Study) -> str:
        if self.study is not None:
            return f"study {study.study_name!r} given to AutoQuant"
        return storage_label(self._storage_spec())

    def _storage_of(self, study: optuna.Study) -> optuna.storages.BaseStorage | None:
        """The storage of a study this object opened (``None`` for a user's ``study=``: its storage is theirs)."""
        return self._storage() if self.study is None else None

    def _fixed(self) -> Fixed:
        return Fixed(adaround=self._adaround_params, amp_candidates=self._amp_candidates, per_channel=self.per_channel)

    def _reference_params(self, orderings: list[str]) -> dict[str, Any] | None:
        """AIMET's recipe as trial parameters: scheme selection, BN fold, CLE, AdaRound (see ``_reference.py``)."""
        return reference_params(self.space, orderings, self.per_channel)

    def _reference_attrs(self, params: dict[str, Any], orderings: list[str], ctx: RunContext) -> dict[str, Any]:
        ordering = str(params.get("pipeline__ordering", orderings[0]))
        ada = reference_adaround(self._adaround_params, self.param_bw, ctx.calibration)
        return {
            "reference_recipe": True,
            "reference_adaround": ada.to_dict() if "adaround" in ordering else None,
            "reference_differences": reference_differences(self.space, ordering, ada, self._adaround_params is not None),
        }

    def _open_study(self, ctx: RunContext, allowed_drop: float) -> optuna.Study:
        return open_study(self, ctx, allowed_drop)

    def setup_study(self, allowed_accuracy_drop: float = 0.01, *, study: optuna.Study | None = None) -> optuna.Study:
        """Open (or take) the study, evaluate the FP32 model once and enqueue the reference trials.

        After this, ``study.optimize(aq.objective, callbacks=[aq.objective.after_trial])`` runs the
        search with Optuna's own loop, and :meth:`result` returns the best model.

        Args:
            allowed_accuracy_drop: tolerated drop in the eval callback's units (>= 0).
            study: an existing study to use (as ``AutoQuant(study=...)``); default: the constructor's
                ``study=``, else the one opened from ``storage``/``study_name``.

        Returns:
            The study, with the identity, FP32 score and target recorded in its user attributes.
        """
        check_allowed_drop(allowed_accuracy_drop)
        if study is not None:
            check_study(study)
            self.study = study
        self._allowed_drop = float(allowed_accuracy_drop)
        ctx = self._context()
        orderings = usable_orderings(self.space, self.param_bw, self.output_bw, self._fixed())
        if not orderings:
            raise InvalidInputError(
                f"search space {self.space.source}: no valid ordering is left for w{self.param_bw}a{self.output_bw} "
                "(AMP orderings need two or more distinct candidates)."
            )
        opened = self._open_study(ctx, self._allowed_drop)
        if self.space.replay_reference and not opened.trials:
            enqueue_reference_trials(self, opened, orderings, ctx)
        complete = [t for t in opened.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
        met = [t.number for t in complete if t.value is not None and t.value >= ctx.target and within(t)]
        if met and target_met_by(opened) is None:  # its worker died between finishing the trial and marking the study
            opened.set_user_attr(TARGET_ATTR, met[0])
        return opened

    @property
    def objective(self) -> TrialObjective:
        """The study's objective, ``objective(trial) -> float`` (one object per AutoQuant).

        ``study.optimize(aq.objective, callbacks=[...])`` runs AutoQuant trials in a study you drive;
        each trial carries the usual records (pipeline, stage scores, eval costs, encodings). The
        context (calibration data, FP32 score, target) is prepared lazily on the first trial when
        :meth:`setup_study` was not called. Pass ``aq.objective.after_trial`` as a callback to stop the
        study once the target is met.
        """
        if self._objective is None:
            self._objective = TrialObjective(self, progress=self.progress)
        return self._objective

    def optimize(
        self,
        allowed_accuracy_drop: float = 0.01,
        n_trials: int | None = None,
        timeout: float | None = None,
    ) -> AutoQuantResult:
        """Run (or resume) the search until a trial meets ``fp32 - allowed_accuracy_drop``.

        Args:
            allowed_accuracy_drop: tolerated drop in the eval callback's units (>= 0).
            n_trials: trials to run in this call; default: the space's ``max_trials`` minus the
                trials the study already has.
            timeout: stop starting new trials after this many seconds.

        Returns:
            The best model scored (even when no trial met the target; see ``target_met``).
        """
        check_allowed_drop(allowed_accuracy_drop)
        if n_trials is not None and (isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1):
            raise InvalidInputError(f"The 'n_trials' parameter must be a positive int or None. Got {n_trials!r} instead.")
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            raise InvalidInputError(
                f"The 'timeout' parameter must be a positive number of seconds or None. Got {timeout!r} instead."
            )
        study = self.setup_study(allowed_accuracy_drop)
        finished = [t for t in study.trials if t.state.is_finished()]
        budget = n_trials if n_trials is not None else max(0, self.space.max_trials - len(finished))
        runner = self.objective
        storage = self._storage_of(study)
        if storage is not None:
            fail_dead_local_trials(study, storage, self.max_retries)
        callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = [runner.after_trial]
        if n_trials is None:  # the space's max_trials bounds the whole study, however many workers share it
            states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
            callbacks.append(optuna.study.MaxTrialsCallback(self.space.max_trials, states=states))
        if timeout is not None:  # spend the time budget by expected gain per second (see _schedule_budget.py)
            orderings = usable_orderings(self.space, self.param_bw, self.output_bw, self._fixed())
            callbacks.append(TimeBudgetScheduler(orderings, timeout, n_trials=budget))
        if target_met_by(study) is None and budget > 0:
            try:
                study.optimize(
                    runner,
                    n_trials=budget,
                    timeout=timeout,
                    catch=(AQSearchError,),
                    callbacks=callbacks,
                    gc_after_trial=False,
                )
            finally:
                runner.close()
        return self.result(study)

    def result(self, study: optuna.Study | None = None) -> AutoQuantResult:
        """The best model of ``study`` (default: the one :meth:`setup_study` opened), saved to ``results_dir/best``."""
        ctx = self._context()
        if study is None:
            study = self.study if self.study is not None and not math.isnan(ctx.target) else self.setup_study(self._allowed_drop)
        elif math.isnan(ctx.target):
            self.setup_study(self._allowed_drop, study=study)
        return self._finish(study, ctx, self.objective)

    # -- results --------------------------------------------------------------------------------
    def _finish(self, study: optuna.Study, ctx: RunContext, runner: TrialObjective) -> AutoQuantResult:
        return finish(self, study, ctx, runner)

    def _pipeline_for(self, trial: optuna.trial.BaseTrial, ctx: RunContext) -> Pipeline:
        fixed = self._fixed()
        aimet = trial.user_attrs.get(FLOW_ATTR) == "aimet"
        if trial.user_attrs.get("reference_recipe"):  # AIMET's recipe with the user's or AIMET's AdaRound
            ada = (aimet_adaround if aimet else reference_adaround)(self._adaround_params, self.param_bw, ctx.calibration)
            fixed = dataclasses.replace(fixed, adaround=ada)
        pipeline = suggest_pipeline(
            trial,
            self.space,
            param_bw=self.param_bw,
            output_bw=self.output_bw,
            num_batches_available=len(ctx.calibration),
            fixed=fixed,
        )
        if aimet:
            return aimet_flow_pipeline(pipeline, self.param_bw, self.output_bw)
        redraw = trial.user_attrs.get(REDRAW_ATTR)  # another draw of AdaRound's mini-batches (see _redraw.py)
        return with_adaround_seed(pipeline, int(redraw["seed"])) if isinstance(redraw, dict) else pipeline

    def _replay(self, trial: optuna.trial.FrozenTrial, ctx: RunContext) -> PipelineRun:
        """Rebuild a finished trial's model from its parameters (the same define-by-run function)."""
        fixed_trial = optuna.trial.FixedTrial(trial.params, number=trial.number)
        for attr in ("reference_recipe", FLOW_ATTR, REDRAW_ATTR):
            if trial.user_attrs.get(attr):
                fixed_trial.set_user_attr(attr, trial.user_attrs[attr])
        pipeline = self._pipeline_for(fixed_trial, ctx)
        stages = int(trial.user_attrs.get("stages_applied", len(pipeline.stages)))
        pipeline = Pipeline(pipeline.stages[:stages])
        logger.info("replaying trial %d: %s", trial.number, pipeline)
        return run_pipeline(ctx, pipeline)

    def replay(self, trial: optuna.trial.FrozenTrial | int, study: optuna.Study | None = None) -> PipelineRun:
        """Rebuild the model of a finished trial (by object or number) without searching."""
        ctx = self._context()
        if isinstance(trial, int):
            if study is None:
                raise InvalidInputError("replay(number) needs the study: replay(number, study=result.study).")
            trial = study.trials[trial]
        if math.isnan(ctx.fp32_accuracy):
            ctx.fp32_accuracy = float((study.user_attrs if study else {}).get("fp32_accuracy", math.nan))
            ctx.target = float((study.user_attrs if study else {}).get("target_accuracy", math.nan))
        return self._replay(trial, ctx)
