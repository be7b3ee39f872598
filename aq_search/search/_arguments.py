"""Checks of AutoQuant's arguments, declared where they can be (see :mod:`aq_search._constraints`)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import optuna
import torch
from torch import nn

from .._constraints import Boolean, Constraint, Interval, NoneValue, check_parameter
from .._data import as_model_args, exhausted_iterator_hint
from .._errors import InvalidInputError
from ..quantsim._quantizer import check_bitwidth
from ._budget import check_max_relative_bops
from ._storage import check_storage_spec

__all__ = ["check_allowed_drop", "check_arguments", "check_study", "materialize"]


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


def check_arguments(
    *,
    model: Any,
    dummy_input: Any,
    eval_callback: Any,
    forward_fn: Any,
    param_bw: Any,
    output_bw: Any,
    storage: Any,
    max_relative_bops: Any,
    sampler: Any,
    pruner: Any,
    study: Any,
    artifact_store: Any,
    plain: dict[str, Any],
) -> None:
    """Check :class:`~aq_search.AutoQuant`'s arguments before anything is stored (``plain``: by their
    declared constraints); raises :class:`~aq_search.InvalidInputError` naming the argument and the fix."""
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
    for name, value in plain.items():
        check_parameter(name, "AutoQuant", value, _PARAMETER_CONSTRAINTS[name])
    if storage is not None:
        check_storage_spec(storage)
    if max_relative_bops is not None:
        check_max_relative_bops(max_relative_bops)
    if sampler is not None and not isinstance(sampler, optuna.samplers.BaseSampler):
        raise InvalidInputError(
            f"The 'sampler' parameter of AutoQuant must be an optuna.samplers.BaseSampler or None. Got {sampler!r} instead."
        )
    if pruner is not None and not isinstance(pruner, optuna.pruners.BasePruner):
        raise InvalidInputError(
            f"The 'pruner' parameter of AutoQuant must be an optuna.pruners.BasePruner or None. Got {pruner!r} instead."
        )
    if study is not None:
        check_study(study)
    if artifact_store is not None and not (hasattr(artifact_store, "write") and hasattr(artifact_store, "open_reader")):
        raise InvalidInputError(
            "The 'artifact_store' parameter of AutoQuant must be an Optuna artifact store (e.g. "
            f"optuna.artifacts.FileSystemArtifactStore) or None. Got {artifact_store!r} instead."
        )


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
