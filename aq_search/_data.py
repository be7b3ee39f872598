"""How batches reach a model: the user owns the data loop, these helpers only feed batches."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ._errors import InvalidInputError

__all__ = [
    "ForwardFn",
    "as_model_args",
    "check_batch_fits",
    "data_fingerprint",
    "exhausted_iterator_hint",
    "feed_batch",
    "is_one_shot",
    "iterate_batches",
    "move_to",
]

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


def _max_positional(model: nn.Module) -> int | None:
    """How many positional inputs ``model.forward`` takes (``None``: any number, or unknown)."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return None
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def check_batch_fits(model: nn.Module, batch: Any) -> None:
    """Raise :class:`InvalidInputError` when a tuple/list batch has more items than ``model`` takes inputs.

    The usual cause: labelled ``(inputs, labels)`` batches from a DataLoader fed to a one-input model.
    The message says how to fix it: a ``forward_fn`` that feeds the inputs only, or a loader without labels.
    """
    if not isinstance(batch, (tuple, list)):
        return
    limit = _max_positional(model)
    if limit is None or len(batch) <= limit:
        return
    kinds = ", ".join(type(b).__name__ + (f"{list(b.shape)}" if isinstance(b, Tensor) else "") for b in batch)
    raise InvalidInputError(
        f"a calibration batch is a {type(batch).__name__} of {len(batch)} items ({kinds}), fed as model(*batch), but the "
        f"model takes {limit} positional input(s). If the batches are (inputs, labels), pass "
        "forward_fn=lambda model, batch: model(batch[0]) to AutoQuant or the techniques (to compute_encodings, a "
        "forward_pass_callback that runs model(x) for each batch), "
        "or give unlabeled batches, e.g. [x for x, _ in loader]."
    )


def feed_batch(model: nn.Module, batch: Any) -> Any:
    """Run ``model`` on one batch: a tensor as ``model(x)``, a tuple/list as ``model(*x)``, a dict as ``model(**x)``.

    Raises:
        InvalidInputError: the batch has more items than the model takes inputs (labelled batches?).
    """
    args, kwargs = as_model_args(batch)
    try:
        return model(*args, **kwargs)
    except TypeError:
        check_batch_fits(model, batch)  # a clear error when that is the cause
        raise


def is_one_shot(data: Any) -> bool:
    """True for an iterator (a generator, ``iter(list)``, ...): it can be iterated once only."""
    return isinstance(data, Iterator)


def exhausted_iterator_hint(data: Any) -> str:
    """A sentence for an error about data that yielded nothing: says so when it is a spent iterator."""
    if not is_one_shot(data):
        return ""
    return (
        f" It is an iterator ({type(data).__name__}), which can be read only once: it was probably consumed already. "
        "Pass a list or a DataLoader, which can be iterated again."
    )


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
        if t.numel():
            h.update(t.view(torch.uint8).numpy())  # hashed in place (no copy of a large tensor's bytes)
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
