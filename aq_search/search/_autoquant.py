"""AutoQuant: AIMET's fixed PTQ recipe turned into an Optuna search that stops at the target."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from torch import nn

from .._data import as_model_args, data_fingerprint
from .._errors import AQSearchError, EvalCallbackError, InvalidInputError
from ..inspect import publish_study, record_trial
from ..quantsim import QuantSim, prepare_model
from ..quantsim._quantizer import check_bitwidth
from ._budget import Budget, check_max_relative_bops
from ._costs import eval_equivalents, study_costs
from ._pipeline import (
    Fixed,
    Pipeline,
    PipelineRun,
    RunContext,
    StageError,
    StageResult,
    model_fingerprint,
    run_pipeline,
    suggest_pipeline,
    usable_orderings,
)
from ._prefix import PREFIX_ATTR, KnownScores
from ._pruner import StagePruner
from ._reference import cheap_first_params, reference_adaround, reference_differences, reference_params
from ._run import stage_label
from ._space import SearchSpace, load_search_space
from ._storage import WORKER_ATTR, check_storage_spec, fail_dead_local_trials, make_storage, storage_label, worker_id

__all__ = ["AutoQuant", "AutoQuantResult", "CountingEval"]

logger = logging.getLogger(__name__)

RESULTS_VERSION = 1
_TARGET_ATTR = "target_met_by"
_IDENTITY_ATTR = "identity"


class CountingEval:
    """Wraps the user's ``eval_callback(model, num_samples)``: counts calls and checks the result."""

    def __init__(self, fn: Callable[[nn.Module, int | None], Any], eval_size: int | None = None) -> None:
        self.fn = fn
        self.eval_size = eval_size
        self.calls = 0
        self.samples = 0
        self.equivalents = 0.0  # samples / eval_size; a full evaluation counts 1
        self.seconds = 0.0

    def __call__(self, model: nn.Module, num_samples: int | None = None) -> float:
        start = time.perf_counter()
        training = model.training
        model.eval()
        try:
            with torch.no_grad():
                value = self.fn(model, num_samples)
        except AQSearchError:
            raise
        except Exception as err:
            raise EvalCallbackError(f"the eval callback raised {type(err).__name__}: {err}") from err
        finally:
            model.train(training)
            self.calls += 1
            self.samples += num_samples or 0
            self.equivalents += eval_equivalents(num_samples, self.eval_size)
            self.seconds += time.perf_counter() - start
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EvalCallbackError(
                f"the eval callback must return a number (higher is better). Got {type(value).__name__} {value!r} instead."
            )
        value = float(value)
        if not math.isfinite(value):
            raise EvalCallbackError(f"the eval callback returned {value}; it must return a finite number (higher is better).")
        return value


@dataclass(frozen=True)
class AutoQuantResult:
    """What :meth:`AutoQuant.optimize` returns: the best model scored, and what was tried.

    Attributes:
        model: the fake-quantized model (``sim.model``), callable like the original.
        sim: the :class:`~aq_search.QuantSim` behind it (encodings, quantizers).
        accuracy: its score from the eval callback (full evaluation).
        fp32_accuracy: the FP32 model's score.
        target_accuracy: ``fp32_accuracy - allowed_accuracy_drop``.
        target_met: whether ``accuracy >= target_accuracy``.
        encoding_path: the best model's encodings JSON.
        pipeline: the techniques that produced it, in order.
        study: the Optuna study (all trials, per-stage values, user attributes).
        n_eval_calls: eval callback calls in the study (all trials and workers, plus FP32).
        n_trials: finished trials in the study.
        best_trial: number of the trial that produced the model.
        message: a one-paragraph account of what was tried and how it went.
        results_dir: the folder holding the model, encodings, pipeline and summary.
        stage_results: every stage the best trial ran (cost, gain, which one won: ``best``).
        n_eval_equivalents: evaluation cost of the study in full evaluations (subset calls count
            ``num_samples / eval_size``).
        relative_bops: the model's BOPs relative to the all-``w{param_bw}a{output_bw}`` model.
        within_budget: whether that is at most ``max_relative_bops`` (``target_met`` needs it).
        best_stage: which stage of the best trial produced the model (1-based; keep-best).
    """

    model: nn.Module
    sim: QuantSim
    accuracy: float
    fp32_accuracy: float
    target_accuracy: float
    target_met: bool
    encoding_path: str
    pipeline: Pipeline
    study: optuna.Study
    n_eval_calls: int
    n_trials: int
    best_trial: int
    message: str
    results_dir: str
    stage_results: tuple[StageResult, ...] = field(default=())
    n_eval_equivalents: float = math.nan
    relative_bops: float | None = None
    within_budget: bool = True
    best_stage: int = 0

    def export_onnx(self, path: str | os.PathLike[str], **kwargs: Any) -> Any:
        """Write the best model as ONNX (QDQ + FP32 + encodings) and validate it; see :func:`aq_search.export_onnx`."""
        from ..export import export_onnx

        return export_onnx(self.sim, kwargs.pop("dummy_input", None), path, **kwargs)

    def __repr__(self) -> str:
        return (
            f"AutoQuantResult(accuracy={self.accuracy:.4f}, fp32_accuracy={self.fp32_accuracy:.4f}, "
            f"target_met={self.target_met}, pipeline='{self.pipeline}', n_trials={self.n_trials}, "
            f"n_eval_calls={self.n_eval_calls}, relative_bops={self.relative_bops})"
        )


def _materialize(data_loader: Any, limit: int | None) -> list[Any]:
    if isinstance(data_loader, (torch.Tensor, str, bytes)) or not isinstance(data_loader, Iterable):
        raise InvalidInputError(
            "data_loader must be a DataLoader or a re-iterable of batches (e.g. a list of tensors). "
            f"Got {type(data_loader).__name__} instead."
        )
    batches = []
    for i, batch in enumerate(data_loader):
        if limit is not None and i >= limit:
            break
        batches.append(batch)
    if not batches:
        raise InvalidInputError("data_loader yielded no batches: calibration needs unlabeled data (at least one batch).")
    return batches


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
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidInputError(f"model must be a torch.nn.Module. Got {type(model).__name__} instead.")
        if not callable(eval_callback):
            raise InvalidInputError(
                "eval_callback must be callable as eval_callback(model, num_samples) -> float. "
                f"Got {type(eval_callback).__name__} instead."
            )
        if forward_fn is not None and not callable(forward_fn):
            raise InvalidInputError("forward_fn must be callable as forward_fn(model, batch).")
        check_bitwidth(param_bw, "param_bw")
        check_bitwidth(output_bw, "output_bw")
        as_model_args(dummy_input)
        if num_calibration_batches is not None and (
            isinstance(num_calibration_batches, bool)
            or not isinstance(num_calibration_batches, int)
            or num_calibration_batches < 1
        ):
            raise InvalidInputError(
                "The 'num_calibration_batches' parameter must be a positive int or None. "
                f"Got {num_calibration_batches!r} instead."
            )
        if per_channel is not None and not isinstance(per_channel, bool):
            raise InvalidInputError(f"The 'per_channel' parameter must be True, False or None. Got {per_channel!r} instead.")
        for name, value, low in (
            ("heartbeat_interval", heartbeat_interval, 1),
            ("grace_period", grace_period, 1),
            ("max_retries", max_retries, 0),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise InvalidInputError(f"The '{name}' parameter must be an int >= {low} or None. Got {value!r} instead.")
        if storage is not None:
            check_storage_spec(storage)
        if max_relative_bops is not None:
            check_max_relative_bops(max_relative_bops)
        if eval_size is not None and (isinstance(eval_size, bool) or not isinstance(eval_size, int) or eval_size < 1):
            raise InvalidInputError(
                "The 'eval_size' parameter of AutoQuant must be a positive int (the number of samples of the full "
                f"evaluation) or None. Got {eval_size!r} instead."
            )
        self.model = model
        self.dummy_input = dummy_input
        self.data_loader = data_loader
        self.eval_callback = eval_callback
        self.param_bw = param_bw
        self.output_bw = output_bw
        self.results_dir = Path(results_dir)
        self.space = load_search_space(search_space)
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
        self._amp_candidates = tuple(c.name for c in parsed)

    # -- set-up ---------------------------------------------------------------------------------
    def _context(self) -> RunContext:
        if self._ctx is not None:
            return self._ctx
        self.results_dir.mkdir(parents=True, exist_ok=True)
        prepared = prepare_model(self.model, self.dummy_input, leaf_modules=self.leaf_modules)
        batches = _materialize(self.data_loader, self.num_calibration_batches)
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
            forward_fn=self.forward_fn,
            intermediate_num_samples=self.space.intermediate_num_samples,
            adaround_cache=AdaRoundCache(self.results_dir / "cache" / "adaround"),
            seed=self.seed or 0,
            leaf_modules=self.leaf_modules,
            budget=self.budget,
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
        return f"aq-search-{type(self.model).__name__}-w{self.param_bw}a{self.output_bw}"

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

    def _sampler(self) -> optuna.samplers.BaseSampler:
        seed = self.sampler_seed if self.sampler_seed is not None else self.seed
        if self.space.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed,
                n_startup_trials=self.space.n_startup_trials,
                multivariate=True,
                group=True,
                constant_liar=True,
            )

    def _pruner(self) -> optuna.pruners.BasePruner:
        p = self.space.pruner
        if p.type == "none":
            return optuna.pruners.NopPruner()
        percentile = 50.0 if p.type == "median" else p.percentile
        return StagePruner(percentile, n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)

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
        name = self.study_name or self._default_study_name()
        study = optuna.create_study(
            study_name=name,
            storage=self._storage(),
            sampler=self._sampler(),
            pruner=self._pruner(),
            direction="maximize",
            load_if_exists=True,
        )
        attrs = study.user_attrs
        model_fp = model_fingerprint(ctx.model)
        data_fp = data_fingerprint(ctx.calibration)
        identity = {
            "model_fingerprint": model_fp,
            "data_fingerprint": data_fp,
            "space_fingerprint": self.space.fingerprint(),
            "param_bw": self.param_bw,
            "output_bw": self.output_bw,
            "allowed_accuracy_drop": allowed_drop,
        }
        # identity and FP32 accuracy live in ONE attribute, so a worker starting beside another never
        # sees half of it (several set_user_attr calls are not atomic across processes)
        recorded = attrs.get(_IDENTITY_ATTR)
        if isinstance(recorded, dict):
            changed = [k for k, v in identity.items() if recorded.get(k) != v]
            if changed:
                raise InvalidInputError(
                    f"study {name!r} in {storage_label(self._storage_spec())} was run with different settings "
                    f"({', '.join(changed)} differ); "
                    "resuming it would mix results. Pass a new study_name, or the same model/data/space/settings."
                )
            ctx.fp32_accuracy = float(recorded["fp32_accuracy"])
            logger.info("resuming study %r: %d trial(s) so far", name, len(study.trials))
        else:
            ctx.fp32_accuracy = self._fp32(ctx)
            study.set_user_attr(_IDENTITY_ATTR, {**identity, "fp32_accuracy": ctx.fp32_accuracy})
            for k, v in identity.items():  # also one by one, for the dashboard and notebooks
                study.set_user_attr(k, v)
            study.set_user_attr("fp32_accuracy", ctx.fp32_accuracy)
            study.set_user_attr("fp32_eval_calls", 1)
            study.set_user_attr("search_space", self.space.to_dict())
            study.set_user_attr("results_dir", str(self.results_dir.resolve()))
        ctx.target = ctx.fp32_accuracy - allowed_drop
        study.set_user_attr("target_accuracy", ctx.target)
        return study

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
        if (
            isinstance(allowed_accuracy_drop, bool)
            or not isinstance(allowed_accuracy_drop, (int, float))
            or not (math.isfinite(allowed_accuracy_drop) and allowed_accuracy_drop >= 0)
        ):
            raise InvalidInputError(
                f"The 'allowed_accuracy_drop' parameter must be a number >= 0 (in the eval callback's units, e.g. 0.01). "
                f"Got {allowed_accuracy_drop!r} instead."
            )
        if n_trials is not None and (isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1):
            raise InvalidInputError(f"The 'n_trials' parameter must be a positive int or None. Got {n_trials!r} instead.")
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            raise InvalidInputError(
                f"The 'timeout' parameter must be a positive number of seconds or None. Got {timeout!r} instead."
            )
        ctx = self._context()
        orderings = usable_orderings(self.space, self.param_bw, self.output_bw, self._fixed())
        if not orderings:
            raise InvalidInputError(
                f"search space {self.space.source}: no valid ordering is left for w{self.param_bw}a{self.output_bw} "
                "(AMP orderings need two or more distinct candidates)."
            )
        study = self._open_study(ctx, float(allowed_accuracy_drop))
        if self.space.replay_reference and not study.trials:
            # cheap first (trial 0): the reference recipe's expensive AdaRound runs (trial 1) only when it misses
            cheap = cheap_first_params(self.space, orderings, self.per_channel)
            if cheap is not None:
                study.enqueue_trial(cheap, user_attrs={"cheap_first": True}, skip_if_exists=True)
            params = self._reference_params(orderings)
            if params is not None:
                attrs = self._reference_attrs(params, orderings, ctx)
                if cheap is not None:
                    attrs["reference_differences"].append(
                        "runs after the cheap-first trial 0, only when that trial missed the target (AIMET runs it first)"
                    )
                study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=True)
        finished = [t for t in study.trials if t.state.is_finished()]
        complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
        met = [t.number for t in complete if t.value is not None and t.value >= ctx.target and _within(t)]
        if met and _target_met_by(study) is None:  # its worker died between finishing the trial and marking the study
            study.set_user_attr(_TARGET_ATTR, met[0])
        budget = n_trials if n_trials is not None else max(0, self.space.max_trials - len(finished))
        runner = _TrialRunner(self, ctx)
        fail_dead_local_trials(study, self._storage(), self.max_retries)
        callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = [runner.after_trial]
        if n_trials is None:  # the space's max_trials bounds the whole study, however many workers share it
            states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
            callbacks.append(optuna.study.MaxTrialsCallback(self.space.max_trials, states=states))
        if _target_met_by(study) is None and budget > 0:
            study.optimize(
                runner,
                n_trials=budget,
                timeout=timeout,
                catch=(AQSearchError,),
                callbacks=callbacks,
                gc_after_trial=False,
            )
            runner.close()
        return self._finish(study, ctx, runner)

    # -- results --------------------------------------------------------------------------------
    def _finish(self, study: optuna.Study, ctx: RunContext, runner: _TrialRunner) -> AutoQuantResult:
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
        if not complete:
            raise AQSearchError(
                "no trial completed, so there is no quantized model to return; the failed trials' messages are in "
                f"the study ({storage_label(self._storage_spec())}): "
                + "; ".join(str(t.user_attrs.get("error", "")) for t in study.trials[-3:])
            )
        best = max(complete, key=lambda t: (_within(t), t.value, -t.number))
        run = runner.best_run if runner.best_number == best.number else None
        if run is None:  # the best trial ran in another process (or an earlier run): rebuild it here
            run = self._replay(best, ctx)
            if not math.isclose(run.score, float(best.value or 0.0), rel_tol=0.0, abs_tol=1e-6):
                logger.warning(
                    "replaying trial %d here scored %.6f, not the %.6f it recorded (different machine, threads or "
                    "library versions?); saving the replayed model, reporting the recorded score",
                    best.number,
                    run.score,
                    best.value,
                )
        assert best.value is not None
        out = self.results_dir / "best"
        out.mkdir(parents=True, exist_ok=True)
        encoding_path = out / "encodings.json"
        # several workers may share results_dir: write each file whole, then rename it into place
        _write_atomic(encoding_path, run.sim.export_encodings)
        _write_atomic(out / "model_state.pt", lambda p: torch.save(run.sim.model.state_dict(), p))
        pipeline_text = yaml.safe_dump(run.applied.to_dict(), sort_keys=False)
        _write_atomic(out / "pipeline.yaml", lambda p: p.write_text(pipeline_text, encoding="utf-8"))
        costs = study_costs(study.trials, study.user_attrs)
        n_eval = int(costs["eval_calls"])
        within = _within(best)
        relative = self.budget.relative(run.sim)
        cost_text = self.budget.describe(relative)
        target_met = best.value >= ctx.target and within
        won = str(best.user_attrs.get("best_stage_label", "")) or "its last stage"
        tried = sorted({str(t.user_attrs.get("pipeline", "")) for t in study.trials if t.user_attrs.get("pipeline")})
        if target_met:
            message = (
                f"Target met: {best.value:.4f} >= {ctx.target:.4f} (FP32 {ctx.fp32_accuracy:.4f}) by trial {best.number} "
                f"({won}) with {run.applied} at {cost_text}, after {len(study.trials)} trial(s), {n_eval} eval call(s) "
                f"and {costs['eval_equivalents']:.2f} eval-equivalent(s)."
            )
        elif best.value >= ctx.target:
            message = (
                f"Target not met: the best model scored {best.value:.4f} >= {ctx.target:.4f} but costs {cost_text} "
                f"(allowed: {self.budget.max_relative_bops:g}x; pass max_relative_bops= to allow more). Returning trial "
                f"{best.number} ({won}: {run.applied})."
            )
        else:
            message = (
                f"Target not met: the best of {len(study.trials)} trial(s) scored {best.value:.4f} < {ctx.target:.4f} "
                f"(FP32 {ctx.fp32_accuracy:.4f}); returning trial {best.number}, {won} ({run.applied}, {cost_text}). "
                f"Tried: {'; '.join(tried[:12])}"
                f"{' ...' if len(tried) > 12 else ''}. Consider more trials, a larger allowed drop, higher bit-widths "
                "or mixed precision candidates."
            )
        summary = {
            "results_version": RESULTS_VERSION,
            "aq_search_version": _version(),
            "study_name": study.study_name,
            "storage": storage_label(self._storage_spec()),
            "fp32_accuracy": ctx.fp32_accuracy,
            "target_accuracy": ctx.target,
            "accuracy": best.value,
            "target_met": target_met,
            "best_trial": best.number,
            "best_stage": int(best.user_attrs.get("best_stage", len(run.applied.stages))),
            "best_stage_label": won,
            "pipeline": str(run.applied),
            "n_trials": len(study.trials),
            "n_eval_calls": n_eval,
            "n_eval_equivalents": costs["eval_equivalents"],
            "eval_samples": costs["eval_samples"],
            "trial_seconds": costs["seconds"],
            "cost_by_stage": costs["by_stage"],
            "requested": self.budget.requested,
            "relative_bops_requested": None if relative is None else round(relative, 4),
            "max_relative_bops": self.budget.max_relative_bops,
            "within_budget": within,
            "param_bw": self.param_bw,
            "output_bw": self.output_bw,
            "dummy_input_shapes": _shapes(self.dummy_input),
            "leaf_modules": [m if isinstance(m, str) else f"{m.__module__}.{m.__qualname__}" for m in self.leaf_modules],
            "message": message,
        }
        _write_atomic(out / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=1), encoding="utf-8"))
        logger.info(message)
        result = AutoQuantResult(
            model=run.sim.model,
            sim=run.sim,
            accuracy=float(best.value),
            fp32_accuracy=ctx.fp32_accuracy,
            target_accuracy=ctx.target,
            target_met=target_met,
            encoding_path=str(encoding_path),
            pipeline=run.applied,
            study=study,
            n_eval_calls=n_eval,
            n_trials=len(study.trials),
            best_trial=best.number,
            message=message,
            results_dir=str(self.results_dir),
            stage_results=tuple(run.stages),
            n_eval_equivalents=float(costs["eval_equivalents"]),
            relative_bops=None if relative is None else round(relative, 4),
            within_budget=within,
            best_stage=int(best.user_attrs.get("best_stage", len(run.applied.stages))),
        )
        publish_study(result)  # dashboard note and plots, results_dir/report.html; never raises
        return result

    def _pipeline_for(self, trial: optuna.trial.BaseTrial, ctx: RunContext) -> Pipeline:
        fixed = self._fixed()
        if trial.user_attrs.get("reference_recipe"):  # AIMET's recipe with the user's or AIMET's AdaRound
            fixed = dataclasses.replace(fixed, adaround=reference_adaround(self._adaround_params, self.param_bw, ctx.calibration))
        return suggest_pipeline(
            trial,
            self.space,
            param_bw=self.param_bw,
            output_bw=self.output_bw,
            num_batches_available=len(ctx.calibration),
            fixed=fixed,
        )

    def _replay(self, trial: optuna.trial.FrozenTrial, ctx: RunContext) -> PipelineRun:
        """Rebuild a finished trial's model from its parameters (the same define-by-run function)."""
        fixed_trial = optuna.trial.FixedTrial(trial.params, number=trial.number)
        if trial.user_attrs.get("reference_recipe"):
            fixed_trial.set_user_attr("reference_recipe", True)
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


def may_prune_after(pipeline: Pipeline, index: int) -> bool:
    """Whether a trial may be pruned after stage ``index``: not after its last stage, and not while an
    ``amp`` stage is still to come (mixed precision can recover any score before it, so scores before
    AMP say little about where the trial ends)."""
    later = pipeline.stages[index + 1 :]
    return bool(later) and not any(stage.key == "amp" for stage in later)


def _write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _within(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a finished trial's result is within the cost budget (trials from before budgets: yes)."""
    return trial.user_attrs.get("within_budget", True) is not False


def _target_met_by(study: optuna.Study) -> int | None:
    value = study.user_attrs.get(_TARGET_ATTR)
    return int(value) if value is not None else None


class _TrialRunner:
    """The objective: one trial = one pipeline, reported stage by stage."""

    def __init__(self, aq: AutoQuant, ctx: RunContext) -> None:
        self.aq = aq
        self.ctx = ctx
        self.best_run: PipelineRun | None = None
        self.best_number = -1
        self.best_value = -math.inf
        self.best_rank: tuple[bool, float] = (False, -math.inf)  # (within budget, score), as _finish ranks trials
        self.worker = worker_id()
        self._bar: Any = None

    def _progress(self, study: optuna.Study) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(desc="aq-search trials", unit="trial", leave=False)
        self._bar.update(1)
        best = study.user_attrs.get("best_value")
        if best is not None:
            self._bar.set_postfix(best=f"{best:.4f}", target=f"{self.ctx.target:.4f}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __call__(self, trial: optuna.Trial) -> float:
        ctx = self.ctx
        study = trial.study
        trial.set_user_attr(WORKER_ATTR, self.worker)
        retried = study.get_trials(deepcopy=False)[trial.number].system_attrs.get("failed_trial")
        if retried is not None:  # a retry of a trial whose worker died (heartbeat expired / process gone)
            trial.set_user_attr("retry_of", int(retried))
        if _target_met_by(study) is not None:
            trial.set_user_attr("stopped", f"target already met by trial {_target_met_by(study)}")
            study.stop()
            raise optuna.TrialPruned("target already met")
        assert isinstance(ctx.evaluate, CountingEval)
        counter = ctx.evaluate
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
        seen: list[StageResult] = []

        def on_stage(index: int, result: StageResult) -> bool:
            seen.append(result)
            record(seen)
            trial.report(result.score, step=index)
            if result.num_samples is None and result.score >= ctx.target and result.within_budget:
                return True  # target met within the cost budget: finish with the stages applied so far
            if _target_met_by(study) is not None:
                trial.set_user_attr("stopped", f"target met by trial {_target_met_by(study)}")
                raise optuna.TrialPruned("target met by another trial")
            if may_prune_after(pipeline, index) and trial.should_prune():
                trial.set_user_attr("pruned_at_stage", f"{index + 1}: {pipeline.stages[index].describe()}")
                raise optuna.TrialPruned(f"pruned after stage {index + 1} ({result.score:.4f})")
            return False

        try:
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
        enc_dir = self.aq.results_dir / "trials" / f"trial_{trial.number:04d}"
        enc_dir.mkdir(parents=True, exist_ok=True)
        run.sim.export_encodings(enc_dir / "encodings.json")
        trial.set_user_attr("encodings_path", str(enc_dir / "encodings.json"))
        if (run.within_budget, run.score) > self.best_rank:
            self.best_rank, self.best_value = (run.within_budget, run.score), run.score
            self.best_number, self.best_run = trial.number, run
        record_trial(trial, run, self.aq.results_dir, fp32_accuracy=ctx.fp32_accuracy, target_accuracy=ctx.target)
        return run.score

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.COMPLETE and trial.value is not None:
            # set only once the trial is COMPLETE, so every worker that sees it can also use the trial
            within = trial.user_attrs.get("within_budget", True) is not False
            if trial.value >= self.ctx.target and within and _target_met_by(study) is None:
                study.set_user_attr(_TARGET_ATTR, trial.number)
            best = study.user_attrs.get("best_value")
            if best is None or trial.value > best:
                study.set_user_attr("best_value", trial.value)
        self._progress(study)
        if _target_met_by(study) is not None:
            study.stop()
        else:
            fail_dead_local_trials(study, self.aq._storage(), self.aq.max_retries)


def relative_bops(sim: QuantSim) -> float | None:
    """Bit operations of ``sim`` relative to the same model with every layer at W8A8.

    BOPs of a layer = MACs x weight bits x input-activation bits (a float tensor counts 32 bits).
    """
    from ..amp import layer_costs

    costs = layer_costs(sim)
    acts = sim.activation_quantizers
    total = reference = 0.0
    for layer, cost in costs.items():
        pq = sim.param_quantizer(layer)
        p_bits = pq.bitwidth if pq.enabled else 32
        inputs = [acts[a] for a in sim.input_quantizers_of(layer)]
        a_bits = max((q.bitwidth if q.enabled else 32 for q in inputs), default=32)
        total += cost.macs * p_bits * a_bits
        reference += cost.macs * 64
    return total / reference if reference else None


def _relative_bops(run: PipelineRun) -> float | None:
    try:
        value = relative_bops(run.sim)
    except Exception:
        logger.debug("relative BOPs unavailable", exc_info=True)
        return None
    return None if value is None else round(value, 4)


def _shapes(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return list(x.shape)
    if isinstance(x, (tuple, list)):
        return [_shapes(v) for v in x]
    if isinstance(x, Mapping):
        return {k: _shapes(v) for k, v in x.items()}
    return repr(x)


def _version() -> str:
    from .._version import __version__

    return __version__
