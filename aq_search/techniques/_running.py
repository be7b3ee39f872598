"""Helpers for the data-driven techniques: batches, the FP32 mode of a sim, early-stopped forwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from torch import Tensor

from .._data import iterate_batches
from .._errors import InvalidInputError
from ..quantsim import QuantSim
from ._config import bad_argument

__all__ = ["StopForward", "float_mode", "materialize_batches"]


class StopForward(Exception):
    """Raised by a hook once it has what it needs: the rest of the forward pass is skipped."""


@contextlib.contextmanager
def float_mode(sim: QuantSim) -> Iterator[None]:
    """Every quantizer of the sim off, so it computes the FP32 model (fused ReLU/ReLU6 still apply)."""
    quantizers = list(sim.activation_quantizers.values()) + list(sim.param_quantizers.values())
    states = [q.enabled for q in quantizers]
    for q in quantizers:
        q.enabled = False
    try:
        yield
    finally:
        for q, state in zip(quantizers, states, strict=True):
            q.enabled = state


def materialize_batches(data_loader: Iterable[Any] | None, num_batches: int, who: str) -> list[Any]:
    """The first ``num_batches`` batches as a list (the techniques pass over them many times)."""
    if data_loader is None or isinstance(data_loader, (str, bytes, Tensor)) or not isinstance(data_loader, Iterable):
        raise bad_argument("data_loader", who, "a re-iterable of batches (a DataLoader, a list of tensors ...)", data_loader)
    batches = list(iterate_batches(data_loader, num_batches))
    if not batches:
        raise InvalidInputError(
            f"The 'data_loader' parameter of {who} yielded no batches. Pass a non-empty data loader of calibration batches."
        )
    return batches
