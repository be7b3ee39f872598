"""Fake-quantization math as plain functions.

Conventions (the same as ``torch.fake_quantize_per_*_affine``):

* ``q = clamp(round(x * (1 / scale)) + zero_point, quant_min, quant_max)`` (round half to even),
* ``x_hat = (q - zero_point) * scale``.

Symmetric encodings use the signed grid ``[-2**(b-1), 2**(b-1) - 1]`` with ``zero_point = 0``;
asymmetric encodings use the unsigned grid ``[0, 2**b - 1]``. Zero is always exactly representable.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._numerics import per_channel

__all__ = [
    "MIN_SCALE",
    "encoding_from_range",
    "int_range",
    "quantize_dequantize",
    "range_from_encoding",
]

#: Smallest scale an encoding may have (a channel of zeros gets it instead of 0).
MIN_SCALE = 1e-10


def int_range(bitwidth: int, symmetric: bool) -> tuple[int, int]:
    """The integer grid ``(quant_min, quant_max)`` for a bit-width."""
    if symmetric:
        return -(2 ** (bitwidth - 1)), 2 ** (bitwidth - 1) - 1
    return 0, 2**bitwidth - 1


def encoding_from_range(lo: Tensor, hi: Tensor, bitwidth: int, symmetric: bool) -> tuple[Tensor, Tensor]:
    """Scale (float32) and zero point (int32) of the grid that covers ``[lo, hi]``.

    ``lo`` and ``hi`` are 1-d tensors (one element per channel, or a single element per tensor).
    The range is first widened to contain zero.
    """
    lo = torch.clamp(lo.detach().to(torch.float32), max=0.0)
    hi = torch.clamp(hi.detach().to(torch.float32), min=0.0)
    qmin, qmax = int_range(bitwidth, symmetric)
    if symmetric:
        absmax = torch.maximum(-lo, hi)
        scale = (absmax / qmax).clamp_min(MIN_SCALE)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = ((hi - lo) / (qmax - qmin)).clamp_min(MIN_SCALE)
        zero_point = torch.clamp(torch.round(-lo / scale), qmin, qmax).to(torch.int32)
    return scale.contiguous(), zero_point.contiguous()


def range_from_encoding(scale: Tensor, zero_point: Tensor, bitwidth: int, symmetric: bool) -> tuple[Tensor, Tensor]:
    """The representable ``(min, max)`` of an encoding."""
    qmin, qmax = int_range(bitwidth, symmetric)
    zp = zero_point.to(torch.float32)
    return (qmin - zp) * scale, (qmax - zp) * scale


def quantize_dequantize(
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    quant_min: int,
    quant_max: int,
    axis: int | None = None,
) -> Tensor:
    """Reference fake quantization, written out (no fused kernel).

    Matches ``torch.fake_quantize_per_tensor_affine`` (``axis=None``) and
    ``torch.fake_quantize_per_channel_affine`` bit for bit; it is differentiable with respect to
    ``x`` only through ``torch.round`` (zero gradient), so use it for reference, not for training.
    """
    s = per_channel(scale.to(torch.float32), x.dim(), axis)
    zp = per_channel(zero_point.to(torch.float32), x.dim(), axis)
    inv = 1.0 / s
    q = torch.clamp(torch.round(x * inv) + zp, quant_min, quant_max)
    return (q - zp) * s
