"""The counting wrapper around the user's ``eval_callback(model, num_samples)``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._errors import AQSearchError, EvalCallbackError
from ._costs import eval_equivalents

__all__ = ["CountingEval"]


def _as_number(value: Any) -> Any:
    """A one-element tensor or numpy array, or a numpy scalar (``numpy.float32`` ...), as a Python number."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "size", 0) == 1:
        return value.item()  # numpy.float32/float64/int64 scalars and 0-d (or 1-element) arrays
    return value


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
            hint = ""
            if num_samples is not None:
                hint = (
                    f" (it was called with num_samples={num_samples}: if the eval set has fewer samples, evaluate them all "
                    "then, e.g. data[:num_samples], or lower the search space's intermediate_num_samples and "
                    "amp.num_samples_for_phase_1)"
                )
            raise EvalCallbackError(f"the eval callback raised {type(err).__name__}: {err}{hint}") from err
        finally:
            model.train(training)
            self.calls += 1
            self.samples += num_samples or 0
            self.equivalents += eval_equivalents(num_samples, self.eval_size)
            self.seconds += time.perf_counter() - start
        value = _as_number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EvalCallbackError(
                f"the eval callback must return a number (higher is better). Got {type(value).__name__} {value!r} instead."
            )
        value = float(value)
        if not math.isfinite(value):
            raise EvalCallbackError(f"the eval callback returned {value}; it must return a finite number (higher is better).")
        return value
