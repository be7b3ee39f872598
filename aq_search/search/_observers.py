"""What a trial and a search's result get besides their scores, attached from outside ``search``.

The search records scores and costs on each trial. What else a trial gets (dashboard artifacts, charts,
notes, AMP attributes) and what a finished search writes besides its model (the study note, the HTML
report) is attached by the package that makes it: :mod:`aq_search.viz` adds its recorder and its report
here when it is imported (``import aq_search`` does), so ``search`` imports none of them.

* a trial callback is ``callback(trial, run, objective)``: the live ``optuna.Trial`` (user attributes can
  still be set), its :class:`~aq_search.search.PipelineRun` and the :class:`TrialObjective` (its
  ``aq.results_dir``, ``aq.artifact_store``, ``ctx.fp32_accuracy``, ``ctx.target``); it runs inside the
  objective, before the trial is told, so a failure must not fail the trial (catch and record it);
* a result callback is ``callback(result)``: the :class:`~aq_search.AutoQuantResult` once it is saved.

Each :class:`TrialObjective` copies the trial callbacks when it is made (``aq.objective.trial_callbacks``
is a list a user may change); results use the list as it is when the search finishes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["add_result_callback", "add_trial_callback", "result_callbacks", "trial_callbacks"]

TrialCallback = Callable[[Any, Any, Any], Any]
ResultCallback = Callable[[Any], Any]

_TRIAL: list[TrialCallback] = []
_RESULT: list[ResultCallback] = []


def add_trial_callback(callback: TrialCallback) -> None:
    """Call ``callback(trial, run, objective)`` at the end of every trial of every later AutoQuant (once)."""
    if callback not in _TRIAL:
        _TRIAL.append(callback)


def add_result_callback(callback: ResultCallback) -> None:
    """Call ``callback(result)`` on every search result once it is saved (once)."""
    if callback not in _RESULT:
        _RESULT.append(callback)


def trial_callbacks() -> list[TrialCallback]:
    """The trial callbacks registered so far (a copy)."""
    return list(_TRIAL)


def result_callbacks() -> list[ResultCallback]:
    """The result callbacks registered so far (a copy)."""
    return list(_RESULT)
