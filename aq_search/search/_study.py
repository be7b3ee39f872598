"""Opening the study: sampler, pruner, storage, and the identity that guards a resumed study."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import optuna

from .._data import data_fingerprint
from ._identity import check_identity, resumed_sampler_seed, study_identity
from ._pipeline import RunContext, model_fingerprint
from ._pruner import StagePruner

if TYPE_CHECKING:
    from ._autoquant import AutoQuant

__all__ = ["IDENTITY_ATTR", "make_pruner", "make_sampler", "open_study"]

logger = logging.getLogger(__name__)

IDENTITY_ATTR = "identity"


def make_sampler(aq: AutoQuant, n_existing_trials: int = 0) -> optuna.samplers.BaseSampler:
    """The user's sampler, else the space's (seeded; reseeded for a resumed study)."""
    if aq.sampler is not None:
        return aq.sampler
    seed = resumed_sampler_seed(aq.sampler_seed if aq.sampler_seed is not None else aq.seed, n_existing_trials)
    if aq.space.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=aq.space.n_startup_trials,
            multivariate=True,
            group=True,
            constant_liar=True,
        )


def make_pruner(aq: AutoQuant) -> optuna.pruners.BasePruner:
    """The user's pruner, else the space's."""
    if aq.pruner is not None:
        return aq.pruner
    p = aq.space.pruner
    if p.type == "none":
        return optuna.pruners.NopPruner()
    percentile = 50.0 if p.type == "median" else p.percentile
    return StagePruner(percentile, n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)


def open_study(aq: AutoQuant, ctx: RunContext, allowed_drop: float) -> optuna.Study:
    """The user's study or the one in storage; identity checked or recorded, FP32 score and target set on ``ctx``."""
    if aq.study is not None:
        study = aq.study
        name = study.study_name
        if aq.sampler is not None:
            study.sampler = aq.sampler
        if aq.pruner is not None:
            study.pruner = aq.pruner
    else:
        name = aq.study_name or aq._default_study_name()
        study = optuna.create_study(
            study_name=name,
            storage=aq._storage(),
            sampler=make_sampler(aq),
            pruner=make_pruner(aq),
            direction="maximize",
            load_if_exists=True,
        )
    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["accuracy"])
    attrs = study.user_attrs
    identity = study_identity(
        model_fingerprint=model_fingerprint(ctx.model),
        data_fingerprint=data_fingerprint(ctx.calibration),
        space_fingerprint=aq.space.fingerprint(),
        param_bw=aq.param_bw,
        output_bw=aq.output_bw,
        allowed_accuracy_drop=allowed_drop,
        quant_scheme=aq.quant_scheme,
        per_channel=aq.per_channel,
        adaround_params=aq._adaround_params,
        amp_candidates=aq._amp_candidates,
        seed=aq.seed,
        target=aq.deployment_target.name,
        max_relative_bops=aq.budget.max_relative_bops,
    )
    # identity and FP32 accuracy live in ONE attribute, so a worker starting beside another never
    # sees half of it (several set_user_attr calls are not atomic across processes)
    recorded = attrs.get(IDENTITY_ATTR)
    if isinstance(recorded, dict):
        check_identity(recorded, identity, study=name, storage=aq._study_label(study))
        ctx.fp32_accuracy = float(recorded["fp32_accuracy"])
        if (
            study.trials and aq.study is None and aq.sampler is None
        ):  # a resumed run: a sampler seeded as the first run's would propose its trials again
            study.sampler = make_sampler(aq, len(study.trials))
        logger.info("resuming study %r: %d trial(s) so far", name, len(study.trials))
    else:
        ctx.fp32_accuracy = aq._fp32(ctx)
        study.set_user_attr(IDENTITY_ATTR, {**identity, "fp32_accuracy": ctx.fp32_accuracy})
        for k, v in identity.items():  # also one by one, for the dashboard and notebooks
            study.set_user_attr(k, v)
        study.set_user_attr("fp32_accuracy", ctx.fp32_accuracy)
        study.set_user_attr("fp32_eval_calls", 1)
        study.set_user_attr("search_space", aq.space.to_dict())
        study.set_user_attr("results_dir", str(aq.results_dir.resolve()))
    ctx.target = ctx.fp32_accuracy - allowed_drop
    study.set_user_attr("target_accuracy", ctx.target)
    return study
