"""How batches reach a model: the user owns the data loop, these helpers only feed batches."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ._errors import InvalidInputError

__all__ = ["ForwardFn", "as_model_args", "data_fingerprint", "feed_batch", "iterate_batches", "move_to"]

#: ``forward_fn(model, batch)`` feeds one batch to a model (the result is ignored).
ForwardFn = Callable[[nn.Module, Any], Any]


def as_model_args(dummy_input: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Split a dummy input into positional and keyword arguments.

    A tensor is one positional argument; a tuple or list is several; a dict is keyword arguments.
    """
    if isinstance(dummy_input, Tensor):
        return (dummy_input,), {}
    if isinstance(dummy_input, (tuple, list)):
        return tuple(dummy_input), {}
    if isinstance(dummy_input, Mapping):
        return (), dict(dummy_input)
    raise InvalidInputError(
        "dummy_input must be a tensor, a tuple/list of model inputs, or a dict of keyword inputs. "
        f"Got {type(dummy_input).__name__} instead."
    )


def feed_batch(model: nn.Module, batch: Any) -> Any:
    """Run ``model`` on one batch: a tensor as ``model(x)``, a tuple/list as ``model(*x)``, a dict as ``model(**x)``."""
    args, kwargs = as_model_args(batch)
    return model(*args, **kwargs)


def iterate_batches(data: Iterable[Any], num_batches: int | None = None) -> Iterable[Any]:
    """Yield up to ``num_batches`` batches of a re-iterable (DataLoader, list ...)."""
    for i, batch in enumerate(data):
        if num_batches is not None and i >= num_batches:
            return
        yield batch


def move_to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_to(b, device) for b in batch)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    return batch


def _hash_into(h: Any, obj: Any) -> None:
    if isinstance(obj, Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, (tuple, list)):
        h.update(b"[")
        for o in obj:
            _hash_into(h, o)
        h.update(b"]")
    elif isinstance(obj, Mapping):
        for k in sorted(obj, key=str):
            h.update(str(k).encode())
            _hash_into(h, obj[k])
    else:
        h.update(repr(obj).encode())


def data_fingerprint(data: Iterable[Any], num_batches: int | None = None) -> str:
    """A content hash of (the first ``num_batches``) batches, for caching results that depend on data."""
    h = hashlib.sha256()
    for batch in iterate_batches(data, num_batches):
        _hash_into(h, batch)
    return h.hexdigest()


def tensor_fingerprint(*objs: Any) -> str:
    """A content hash of tensors / nested containers / plain values."""
    h = hashlib.sha256()
    for o in objs:
        _hash_into(h, o)
    return h.hexdigest()
