"""4-bit weight storage: ONNX ``INT4``/``UINT4`` initializers (opset 21) instead of 8-bit containers.

ONNX added ``INT4``/``UINT4`` element types in IR version 10 and ``DequantizeLinear`` accepts them from
opset 21 (https://onnx.ai/onnx/operators/onnx__DequantizeLinear.html); the values are packed two per byte,
so a 4-bit weight takes half the bytes of its ``int8`` container. onnxruntime runs ``DequantizeLinear`` on
them. The integers are the very ones the ``int8`` container would hold, so both files dequantize to the
same float weights, bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .._errors import InvalidInputError
from ..quantsim import FakeQuantizer

__all__ = ["INT4_OPSET", "int4_tensor", "resolve_int4", "uses_int4"]

#: ``DequantizeLinear`` takes int4/uint4 from this opset.
INT4_OPSET = 21


def uses_int4(q: FakeQuantizer) -> bool:
    """Whether weight quantizer ``q`` fits a 4-bit ONNX element type."""
    return q.kind == "param" and q.enabled and q.dtype == "int" and q.bitwidth <= 4


def resolve_int4(int4_weights: bool | None, quantizers: Mapping[str, FakeQuantizer], opset: int | None) -> bool:
    """Decide whether 4-bit weights are written as INT4/UINT4.

    ``None`` (automatic): yes when some weight has 4 bits or fewer and ``opset`` is ``None`` or >= 21.
    ``True`` with an explicit ``opset`` < 21 is an error naming the fix.
    """
    if int4_weights is not None and not isinstance(int4_weights, bool):
        raise InvalidInputError(f"The 'int4_weights' parameter must be True, False or None. Got {int4_weights!r} instead.")
    any_4bit = any(uses_int4(q) for q in quantizers.values())
    if int4_weights is False or not any_4bit:
        return False
    if opset is not None and opset < INT4_OPSET:
        if int4_weights:
            raise InvalidInputError(
                f"int4_weights=True needs opset >= {INT4_OPSET} (DequantizeLinear takes int4/uint4 from opset "
                f"{INT4_OPSET}); got opset={opset}. Fix: pass opset={INT4_OPSET} (or None), or int4_weights=False "
                "for int8 containers."
            )
        return False
    return True


def int4_tensor(name: str, values: np.ndarray, signed: bool) -> Any:
    """An ONNX ``INT4``/``UINT4`` tensor holding ``values`` (integers in the 4-bit range)."""
    from onnx import TensorProto, helper

    lo, hi = (-8, 7) if signed else (0, 15)
    flat = np.asarray(values, dtype=np.int64).reshape(-1)
    if flat.size and (int(flat.min()) < lo or int(flat.max()) > hi):
        raise ValueError(f"{name}: values outside [{lo}, {hi}] cannot be stored as {'int4' if signed else 'uint4'}")
    dtype = TensorProto.INT4 if signed else TensorProto.UINT4
    # raw_data, two values per byte, the first in the low nibble (the ONNX layout for 4-bit types)
    nibbles = (flat & 0xF).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    packed = (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)
    return helper.make_tensor(name, dtype, list(np.shape(values)), packed.tobytes(), raw=True)
