"""Side effects of a trial (files written for the user) that must never cost its result.

A trial's score is the result; its encodings file, charts and dashboard artifacts are conveniences.
When writing one fails (disk full, permission denied, a read-only results folder), :func:`guarded`
logs a warning, records the failure on the trial (user attribute ``side_effect_errors``: a list of
``"<what>: <ExceptionType>: <message>"``) and returns ``None``; the trial keeps its score and the
study goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["SIDE_EFFECT_ERRORS_ATTR", "guarded", "record_side_effect_error"]

logger = logging.getLogger(__name__)

#: the trial user attribute listing the side effects that failed
SIDE_EFFECT_ERRORS_ATTR = "side_effect_errors"

_T = TypeVar("_T")


def record_side_effect_error(trial: Any, what: str, err: BaseException) -> None:
    """Log ``err`` (a failed side effect of ``trial``) and append it to the trial's ``side_effect_errors``."""
    entry = f"{what}: {type(err).__name__}: {err}"
    logger.warning("trial %s: %s (the trial's score stands)", getattr(trial, "number", "?"), entry)
    try:
        previous = list(trial.user_attrs.get(SIDE_EFFECT_ERRORS_ATTR, []))
        trial.set_user_attr(SIDE_EFFECT_ERRORS_ATTR, [*previous, entry])
    except Exception as again:  # the storage itself is failing: the log line above is all we can do
        logger.debug("recording a failed side effect failed", exc_info=True)
        logger.warning("trial %s: could not record the failure on the trial: %s", getattr(trial, "number", "?"), again)


def guarded(trial: Any, what: str, fn: Callable[[], _T]) -> _T | None:
    """``fn()``, or ``None`` when it raises: the failure is logged and recorded on ``trial``, never raised."""
    try:
        return fn()
    except Exception as err:
        logger.debug("side effect %r of trial %s failed", what, getattr(trial, "number", "?"), exc_info=True)
        record_side_effect_error(trial, what, err)
        return None
