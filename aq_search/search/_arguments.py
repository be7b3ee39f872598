"""Checks of AutoQuant's arguments, declared where they can be (see :mod:`aq_search._constraints`)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import optuna
import torch

from .._constraints import Boolean, Constraint, Interval, NoneValue
from .._data import exhausted_iterator_hint
from .._errors import InvalidInputError

__all__ = ["check_allowed_drop", "check_study", "materialize"]


#: Declared constraints of AutoQuant's plain arguments (see :mod:`aq_search._constraints`).
_PARAMETER_CONSTRAINTS: dict[str, list[Constraint]] = {
    "num_calibration_batches": [Interval(int, 1, None), NoneValue()],
    "per_channel": [Boolean(), NoneValue()],
    "heartbeat_interval": [Interval(int, 1, None), NoneValue()],
    "grace_period": [Interval(int, 1, None), NoneValue()],
    "max_retries": [Interval(int, 0, None), NoneValue()],
    "eval_size": [Interval(int, 1, None), NoneValue()],
    "progress": [Boolean()],
}


def check_allowed_drop(value: Any) -> None:
    """Raise unless ``value`` is a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise InvalidInputError(
            "The 'allowed_accuracy_drop' parameter must be a number >= 0 (in the eval callback's units, e.g. 0.01). "
            f"Got {value!r} instead."
        )


def check_study(study: Any) -> None:
    """Raise unless ``study`` is a single-objective Optuna study that maximizes."""
    if not isinstance(study, optuna.Study):
        raise InvalidInputError(f"The 'study' parameter of AutoQuant must be an optuna.Study or None. Got {study!r} instead.")
    if len(study.directions) != 1 or study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise InvalidInputError(
            "The 'study' parameter of AutoQuant must be a single-objective study with direction='maximize' "
            f"(the eval callback's score, higher is better). Got directions {study.directions} instead."
        )


def materialize(data_loader: Any, limit: int | None) -> list[Any]:
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
        raise InvalidInputError(
            "data_loader yielded no batches: calibration needs unlabeled data (at least one batch)."
            + exhausted_iterator_hint(data_loader)
        )
    return batches
