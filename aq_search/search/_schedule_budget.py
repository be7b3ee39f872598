"""A study started with a time budget spends it by expected gain per second (issue 13 point 3).

Without a budget, the sampler draws each trial's ordering. With ``optimize(timeout=...)``, after every
trial :class:`TimeBudgetScheduler` enqueues the next trial's ordering itself (the sampler still draws
the other parameters): the one whose stages promise the most score per second of the time left, read
from the cost records the study already holds (each stage's ``seconds`` and ``gain`` over the stage
before it, the ``stage_scores`` of :mod:`aq_search.search._costs`).

How an ordering is valued (:func:`rank_orderings`): its stages are walked in order, each with the
mean seconds and mean gain its technique has shown (a negative mean counts 0: keep-best never loses
score to a stage); stages that no longer fit in the time left are dropped, and the ordering's value
is its total gain divided by the seconds of the stages that fit. A technique without a record yet is
valued optimistically (the best mean gain seen, at the median stage time), so each gets tried once.
Before any stage has a gain on record the scheduler enqueues nothing and the sampler decides.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from ._objective import target_met_by

__all__ = ["StageRate", "TimeBudgetScheduler", "rank_orderings", "stage_rates"]

logger = logging.getLogger(__name__)

_FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@dataclass(frozen=True)
class StageRate:
    """What one technique's stages have cost and gained so far (means over the stages on record)."""

    key: str
    seconds: float
    gain: float | None  # None: no stage of it had a previous stage to gain over
    runs: int


def stage_rates(trials: Iterable[Any]) -> dict[str, StageRate]:
    """Mean seconds and mean gain per technique key, from the trials' ``stage_scores`` records.

    Stages whose score came from the study (``from_study``) cost nothing this time and are skipped.
    """
    seconds: dict[str, list[float]] = {}
    gains: dict[str, list[float]] = {}
    for t in trials:
        for s in t.user_attrs.get("stage_scores", []) or []:
            if not isinstance(s, Mapping) or s.get("from_study"):
                continue
            key = str(s.get("stage", "?"))
            seconds.setdefault(key, []).append(float(s.get("seconds", 0.0) or 0.0))
            if s.get("gain") is not None:
                gains.setdefault(key, []).append(float(s["gain"]))
    return {
        k: StageRate(k, statistics.fmean(v), statistics.fmean(gains[k]) if k in gains else None, len(v))
        for k, v in seconds.items()
    }


def rank_orderings(orderings: Sequence[str], rates: Mapping[str, StageRate], remaining_s: float) -> list[tuple[str, float]]:
    """``[(ordering, expected gain per second)]``, best first; empty when no stage has a gain on record.

    See the module docstring for how an ordering is valued.
    """
    known = [r.gain for r in rates.values() if r.gain is not None]
    if not known:
        return []
    prior_gain = max(0.0, max(known))
    prior_seconds = statistics.median([r.seconds for r in rates.values()]) if rates else 1.0
    ranked = []
    for ordering in orderings:
        spent, gained = 0.0, 0.0
        for key in ordering.split(">"):
            rate = rates.get(key)
            secs = rate.seconds if rate is not None else prior_seconds
            gain = prior_gain if rate is None else max(0.0, rate.gain or 0.0)
            if spent + secs > remaining_s:
                break
            spent += secs
            gained += gain
        ranked.append((ordering, gained / spent if spent > 0 else 0.0))
    ranked.sort(key=lambda item: -item[1])
    return ranked


class TimeBudgetScheduler:
    """Optuna callback: enqueue the next trial's ordering by expected gain per second of the time left.

    Args:
        orderings: the orderings the space allows (as ``suggest_pipeline`` offers them).
        timeout: the study's time budget in seconds, counted from this object's creation.
        n_trials: the trials this run may start (none is enqueued for after the last one).
    """

    def __init__(self, orderings: Sequence[str], timeout: float, n_trials: int | None = None) -> None:
        self.orderings = list(orderings)
        self.deadline = time.monotonic() + float(timeout)
        self.trials_left = n_trials

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.trials_left is not None:
            self.trials_left -= 1
        remaining = self.deadline - time.monotonic()
        if len(self.orderings) < 2 or remaining <= 0 or target_met_by(study) is not None or self.trials_left == 0:
            return
        if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
            return  # an enqueued trial (the reference ones) runs first
        ranked = rank_orderings(self.orderings, stage_rates(study.get_trials(deepcopy=False, states=_FINISHED)), remaining)
        if not ranked or ranked[0][1] <= 0:
            return
        best, rate = ranked[0]
        logger.info("time budget: %.0f s left, next ordering %s (expected %.2g per s)", remaining, best, rate)
        study.enqueue_trial(
            {"pipeline__ordering": best},
            user_attrs={"scheduled_by": f"time budget: {remaining:.0f} s left, expected gain {rate:.3g}/s"},
        )
