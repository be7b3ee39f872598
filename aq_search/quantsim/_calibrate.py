"""The calibration loop of :meth:`QuantSim.compute_encodings`: a user callback or a re-iterable of batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .._constraints import parameter_error
from .._data import exhausted_iterator_hint, feed_batch, is_one_shot
from .._device import check_same_device
from .._errors import CalibrationError

__all__ = ["calibration_runner"]


def calibration_runner(
    callback: Any, callback_args: Any = None, *, who: str = "QuantSim.compute_encodings", param: str = "forward_pass_callback"
) -> Callable[[nn.Module], None]:
    """``run(model)`` that feeds the calibration data to ``model``.

    Args:
        callback: ``callback(model)`` (or ``callback(model, callback_args)``) running the batches,
            or a re-iterable of batches, each fed as ``model(x)`` / ``model(*x)`` / ``model(**x)``.
        callback_args: the second argument of ``callback``, when given.
        who / param: the function and parameter named in the error message.

    Raises:
        InvalidInputError: ``callback`` is neither.
    """
    if callable(callback):
        fn = callback

        def run(model: nn.Module) -> None:
            if callback_args is None:
                fn(model)
            else:
                fn(model, callback_args)

    elif isinstance(callback, Iterable) and not isinstance(callback, (str, bytes, torch.Tensor)):
        batches = callback

        def run(model: nn.Module) -> None:
            fed = 0
            for batch in batches:
                if fed == 0:
                    check_same_device(model, batch, "the first calibration batch")
                feed_batch(model, batch)
                fed += 1
            if fed == 0 and is_one_shot(batches):
                raise CalibrationError("the calibration batches yielded nothing." + exhausted_iterator_hint(batches))

    else:
        must = f"a callable {param}(model) that runs calibration batches through the model (or a re-iterable of batches)"
        raise parameter_error(param, who, must, callback)
    return run
