"""Small numeric helpers shared across packages: per-channel broadcasting, output SQNR, the Pareto front.

Plain functions on tensors and floats, no state; each replaces a piece of math that several modules wrote
out for themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from torch import Tensor

__all__ = ["channel_shape", "pareto_front", "per_channel", "signal_and_noise", "sqnr_db"]

T = TypeVar("T")


def channel_shape(ndim: int, axis: int | None) -> list[int]:
    """The shape that broadcasts a per-channel vector (scale, zero point) along ``axis`` of an ``ndim`` tensor.

    ``[1] * ndim`` with ``-1`` at ``axis``; all ones when ``axis`` is ``None`` (per-tensor).

    Example:
        >>> channel_shape(4, 0), channel_shape(2, 1), channel_shape(3, None)
        ([-1, 1, 1, 1], [1, -1], [1, 1, 1])
    """
    shape = [1] * ndim
    if axis is not None:
        shape[axis] = -1
    return shape


def per_channel(t: Tensor, ndim: int, axis: int | None) -> Tensor:
    """A scale or zero point (one value, or one per channel along ``axis``) shaped to broadcast against an ``ndim`` tensor.

    Example:
        >>> import torch
        >>> per_channel(torch.ones(3), 4, 0).shape, per_channel(torch.ones(1), 2, 1).shape
        (torch.Size([3, 1, 1, 1]), torch.Size([]))
    """
    if axis is None or t.numel() == 1:
        return t.reshape(())
    return t.reshape(channel_shape(ndim, axis))


def signal_and_noise(reference: Sequence[Tensor], outputs: Sequence[Tensor]) -> tuple[float, float]:
    """``(signal power, noise power)`` of ``outputs`` against ``reference``, summed over all tensors.

    The caller checks that both hold the same number of tensors of the same shapes.
    """
    signal = sum(float(r.pow(2).sum()) for r in reference)
    noise = sum(float((r - o).pow(2).sum()) for r, o in zip(reference, outputs, strict=True))
    return float(signal), float(noise)


def sqnr_db(signal: float, noise: float) -> float:
    """Signal-to-quantization-noise ratio in dB: ``inf`` without noise, ``-inf`` for a non-finite noise."""
    if not math.isfinite(noise):
        return -math.inf
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-300) / noise)


def pareto_front(items: Iterable[T], key: Callable[[T], tuple[float, float]]) -> list[T]:
    """The items that no other item beats on both cost (lower is better) and accuracy (higher is better).

    ``key(item)`` gives ``(cost, accuracy)``. Returned by increasing cost (accuracy strictly increases too);
    of items with the same cost and accuracy, the first one given is kept.

    Example:
        >>> pareto_front([(0.5, 0.9), (0.25, 0.8), (0.5, 0.7), (0.75, 0.95)], key=lambda p: p)
        [(0.25, 0.8), (0.5, 0.9), (0.75, 0.95)]
    """
    front: list[T] = []
    best = 0.0
    for item in sorted(items, key=lambda i: (key(i)[0], -key(i)[1])):
        accuracy = key(item)[1]
        if not front or accuracy > best:
            front.append(item)
            best = accuracy
    return front
