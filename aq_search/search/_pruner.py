"""Pruning by stage: a trial is compared with the trials that ran the same stages so far."""

from __future__ import annotations

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

__all__ = ["StagePruner"]


def _prefix(trial: FrozenTrial, step: int) -> tuple[str, ...] | None:
    ordering = trial.user_attrs.get("ordering")
    if not isinstance(ordering, str):
        return None
    return tuple(ordering.split(">")[: step + 1])


class StagePruner(BasePruner):
    """Prune a trial whose score after stage ``k`` is below a percentile of the other trials' scores
    after the same first ``k + 1`` stages.

    Optuna's MedianPruner compares the *best* intermediate value so far, which suits learning
    curves; a pipeline's score after a stage replaces the previous one (a bad quant scheme after
    a good BN fold is still bad), so this pruner compares the current value, and only with trials
    whose pipeline has the same stages up to this step (``user_attrs["ordering"]``).

    Args:
        percentile: prune below this percentile of the comparable values (50: the median).
        n_startup_trials: no pruning until this many trials completed.
        n_warmup_steps: the first stages of a trial are never pruned.
        n_min_trials: comparable trials needed at a step before pruning there.
    """

    def __init__(
        self, percentile: float = 50.0, n_startup_trials: int = 3, n_warmup_steps: int = 1, n_min_trials: int = 1
    ) -> None:
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f"percentile must be in [0, 100]. Got {percentile!r} instead.")
        self.percentile = percentile
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps
        self.n_min_trials = n_min_trials

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if sum(t.state == TrialState.COMPLETE for t in trials) < self.n_startup_trials:
            return False
        prefix = _prefix(trial, step)
        if prefix is None:
            return False
        values = [
            t.intermediate_values[step]
            for t in trials
            if t.number != trial.number and step in t.intermediate_values and _prefix(t, step) == prefix
        ]
        values = [v for v in values if np.isfinite(v)]
        if len(values) < self.n_min_trials:
            return False
        threshold = float(np.percentile(values, self.percentile))
        value = trial.intermediate_values[step]
        if study.direction == optuna.study.StudyDirection.MAXIMIZE:
            return bool(value < threshold)
        return bool(value > threshold)
