"""Redraws: a near miss whose model AdaRound rounded runs again with another draw of AdaRound's mini-batches.

AdaRound learns each layer's rounding from mini-batches drawn at random from its cached inputs, so one pipeline
ends a few evaluation samples apart from one seed to the next. Measured (BENCHMARKS 1a/1b): trial 0's pipeline
on EfficientNet-Lite0 W4A8 scored 0.9453 / 0.9609 / 0.9688 with seeds 0 / 1 / 2 (128 images: the 0.95 target
met on two seeds of three); on Fashion-MNIST W4A8 two orderings scored 0.8534 / 0.8515 and 0.8540 / 0.8572 on
seeds 0 / 1 (10,000 images, target 0.8565). That spread is about one standard error of the evaluation, as large
as the differences between the orderings and scheme pairs the sampler would try next.

So when a finished trial is the study's best, misses the target within the budget by less than one standard
error of the full evaluation at the target (:func:`near_miss_margin`: the eval cannot tell that model from one
that meets the target) and its best stage comes after AdaRound, the search enqueues the same trial again with
AdaRound's next seed (``AdaRoundParams.seed``: the study's seed + the draw's number). The stages before AdaRound
keep their prefix keys, so their scores come from the study and their models from the stage caches: a redraw
costs one AdaRound run and the evaluations from AdaRound on (one full evaluation when it is scored at once).
At most ``adaround_redraws`` (a key of the space) per trial; a redraw runs after the trials already queued (the
AIMET reference trial). Not for AIMET's own flow (``replay_reference: aimet``), nor when the user fixed
AdaRound's seed. The redraw's ``adaround_redraw`` record says whose draw it is (``of``), which (``draw``) and
with which ``seed``; replaying it rebuilds that draw.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any

import optuna

from ._aimet_flow import FLOW_ATTR
from ._fidelity import standard_error
from ._objective import within
from ._pipeline import Pipeline, Stage

__all__ = ["REDRAW_ATTR", "near_miss_margin", "plan_redraw", "with_adaround_seed"]

logger = logging.getLogger(__name__)

#: the user attr of a redraw trial: ``{"of": root trial, "draw": 1.., "seed": AdaRound's seed, "miss": ...}``
REDRAW_ATTR = "adaround_redraw"
#: user attrs that change the pipeline a trial's parameters build
PIPELINE_ATTRS = ("reference_recipe",)
#: user attrs a redraw copies from the trial it redraws
COPIED_ATTRS = (*PIPELINE_ATTRS, "cheap_first")


def near_miss_margin(target: float, eval_size: int | None, allowed_drop: float) -> float:
    """How far below the target a full score still counts as a near miss: one standard error of an accuracy at
    the target on ``eval_size`` samples; a quarter of the allowed drop when the size is unknown or the target
    is not an accuracy in ``(0, 1)``."""
    if eval_size and 0.0 < target < 1.0:
        return standard_error(target, eval_size)
    return max(allowed_drop, 0.0) / 4.0


def with_adaround_seed(pipeline: Pipeline, seed: int) -> Pipeline:
    """``pipeline`` with every AdaRound stage drawing its mini-batches from ``seed``."""
    return Pipeline(
        tuple(Stage(s.key, dataclasses.replace(s.config, seed=seed)) if s.key == "adaround" else s for s in pipeline.stages)
    )


def _adaround_in_result(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the trial's best stage (its result) comes at or after an AdaRound stage."""
    stages = trial.user_attrs.get("stage_scores")
    best = trial.user_attrs.get("best_stage")
    if not isinstance(stages, list) or not isinstance(best, int):
        return False
    return any(isinstance(s, Mapping) and s.get("stage") == "adaround" for s in stages[:best])


def _first_of_its_kind(trials: list[optuna.trial.FrozenTrial], trial: optuna.trial.FrozenTrial) -> int:
    """The first trial with ``trial``'s parameters and pipeline attrs and no redraw: the same draw (a sampler
    may propose a trial's parameters again), whose redraws ``trial`` shares."""

    def kind(t: optuna.trial.FrozenTrial) -> tuple[Any, ...]:
        return (t.params, *(t.user_attrs.get(k) for k in PIPELINE_ATTRS))

    same = [t.number for t in trials if REDRAW_ATTR not in t.user_attrs and kind(t) == kind(trial)]
    return min(same, default=trial.number)


def plan_redraw(
    trials: list[optuna.trial.FrozenTrial],
    trial: optuna.trial.FrozenTrial,
    *,
    target: float,
    margin: float,
    max_redraws: int,
    base_seed: int,
) -> dict[str, Any] | None:
    """The user attrs of a redraw of ``trial`` (just finished) when it should get one, else ``None``.

    ``trials`` are the study's trials (any state, ``trial`` among them).
    """
    if max_redraws <= 0 or trial.state != optuna.trial.TrialState.COMPLETE or trial.value is None:
        return None
    value = float(trial.value)
    if not math.isfinite(value) or value >= target or target - value > margin or not within(trial):
        return None
    if trial.user_attrs.get(FLOW_ATTR) == "aimet" or not _adaround_in_result(trial):
        return None
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None and within(t)]
    if any(float(t.value) > value for t in done if t.number != trial.number):  # type: ignore[arg-type]
        return None  # not the study's best: the sampler's next trial is worth more
    mine = trial.user_attrs.get(REDRAW_ATTR)
    root = int(mine["of"]) if isinstance(mine, Mapping) and "of" in mine else _first_of_its_kind(trials, trial)
    draws = [t for t in trials if isinstance(r := t.user_attrs.get(REDRAW_ATTR), Mapping) and r.get("of") == root]
    if len(draws) >= max_redraws:
        return None
    if any(t.state == optuna.trial.TrialState.WAITING for t in draws):
        return None  # one already queued
    draw = len(draws) + 1
    attrs: dict[str, Any] = {k: trial.user_attrs[k] for k in COPIED_ATTRS if k in trial.user_attrs}
    attrs[REDRAW_ATTR] = {"of": root, "draw": draw, "seed": base_seed + draw, "miss": round(target - value, 6)}
    return attrs


def enqueue_redraw(study: optuna.Study, trial: optuna.trial.FrozenTrial, attrs: Mapping[str, Any]) -> None:
    """Queue the redraw (``attrs`` from :func:`plan_redraw`) of ``trial``: its parameters, another AdaRound draw."""
    study.enqueue_trial(dict(trial.params), user_attrs=dict(attrs))
    info = attrs[REDRAW_ATTR]
    logger.info(
        "trial %d missed the target by %.4g (within the evaluation's standard error) after AdaRound: "
        "queued redraw %d of trial %d (AdaRound seed %d)",
        trial.number,
        info["miss"],
        info["draw"],
        info["of"],
        info["seed"],
    )
