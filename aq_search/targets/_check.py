"""Check an exported QDQ ONNX model against a deployment target's rules.

Walks every ``DequantizeLinear`` of the graph. A weight is a DequantizeLinear whose input is an initializer;
an activation is a ``QuantizeLinear -> DequantizeLinear`` pair. For each it checks what the target's
profile (:class:`~aq_search.targets.TargetProfile`) requires:

* element type of the integers and the zero point (e.g. TensorRT: ``INT8`` activations; QNN HTP:
  ``UINT8``/``UINT16`` activations, ``INT8``/``INT4`` weights), and the opset those types need;
* zero point value: 0 for every weight (symmetric), and for activations on symmetric targets;
* a pair's QuantizeLinear and DequantizeLinear share one scale and zero point, and the quantized tensor
  feeds only DequantizeLinear;
* axis: a per-channel weight is scaled along its consumer's output-channel axis (Conv: 0, ConvTranspose: 1,
  Gemm: 0 with ``transB=1`` else 1, MatMul: the last axis; checked where the op reads the weight directly);
* placement: a dequantized weight feeds only ops the target runs quantized weights on (4-bit weights:
  only the ops it runs 4-bit weights on), possibly through Transpose/Reshape/Squeeze/Unsqueeze.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import InvalidInputError
from ._profile import TargetProfile, get_target

__all__ = ["TargetCheck", "check_onnx"]

_PASS_THROUGH = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Cast")
_WIDE = ("INT16", "UINT16", "INT4", "UINT4")  # QuantizeLinear/DequantizeLinear take these from opset 21


@dataclass(frozen=True)
class TargetCheck:
    """The outcome of :func:`check_onnx`.

    Attributes:
        target: the profile's name.
        num_weights / num_activations: weight DequantizeLinear nodes and activation Q/DQ pairs checked.
        violations: one line per broken rule, naming the node, the rule and what was found.
    """

    target: str
    num_weights: int
    num_activations: int
    violations: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.violations

    def __str__(self) -> str:
        head = f"{self.target}: {self.num_weights} weight(s), {self.num_activations} activation pair(s)"
        if self.ok:
            return f"{head}: every rule holds"
        return f"{head}: {len(self.violations)} violation(s):\n  " + "\n  ".join(self.violations)


class _Graph:
    def __init__(self, model: Any) -> None:
        from onnx import TensorProto, numpy_helper

        g = model.graph
        self.inits = {i.name: i for i in g.initializer}
        self.values: dict[str, np.ndarray] = {}
        for node in g.node:
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value":
                        self.inits[node.output[0]] = a.t
        self.consumers: dict[str, list[Any]] = {}
        self.producer: dict[str, Any] = {}
        for node in g.node:
            for i in node.input:
                self.consumers.setdefault(i, []).append(node)
            for o in node.output:
                self.producer[o] = node
        self.outputs = {o.name for o in g.output}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self._np = numpy_helper
        self._types = {v: k for k, v in TensorProto.DataType.items()}

    def dtype(self, name: str) -> str | None:
        t = self.inits.get(name)
        return None if t is None else self._types.get(t.data_type, str(t.data_type))

    def value(self, name: str) -> np.ndarray | None:
        t = self.inits.get(name)
        if t is None:
            return None
        if name not in self.values:
            self.values[name] = np.asarray(self._np.to_array(t)).astype(np.float64)
        return self.values[name]

    def weight_consumers(self, name: str) -> list[Any]:
        """Consumers of ``name``, looking through data-movement ops."""
        out: list[Any] = []
        for node in self.consumers.get(name, []):
            if node.op_type in _PASS_THROUGH:
                out.extend(self.weight_consumers(node.output[0]))
            else:
                out.append(node)
        return out


def _attr(node: Any, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _output_axis(consumer: Any, rank: int) -> int | None:
    op = consumer.op_type
    if op == "Conv":
        return 0
    if op == "ConvTranspose":
        return 1
    if op == "Gemm":
        return 0 if _attr(consumer, "transB", 0) else 1
    if op == "MatMul":
        return rank - 1
    return None


def _load(model: Any) -> Any:
    import onnx

    if isinstance(model, (str, os.PathLike)):
        return onnx.load(os.fspath(model))
    if isinstance(model, onnx.ModelProto):
        return model
    raise InvalidInputError(f"check_onnx needs an ONNX file path or an onnx.ModelProto. Got {type(model).__name__} instead.")


def check_onnx(model: Any, target: str | TargetProfile) -> TargetCheck:
    """Check every Q/DQ pair of a QDQ ONNX model against ``target``'s rules.

    Args:
        model: a path to an ONNX file (e.g. :attr:`OnnxExport.path`) or an ``onnx.ModelProto``.
        target: ``"generic"``, ``"onnxruntime"``, ``"tensorrt"``, ``"qnn"`` or a profile.

    Returns:
        A :class:`TargetCheck`; ``.ok`` is True when every rule holds, ``.violations`` lists the rest.

    Example:
        >>> check = aq_search.targets.check_onnx(export.path, "tensorrt")   # doctest: +SKIP
        >>> assert check.ok, str(check)                                      # doctest: +SKIP
    """
    profile = get_target(target)
    g = _Graph(_load(model))
    bad: list[str] = []
    n_w = n_a = 0
    dq_nodes = {id(n): n for n in g.producer.values() if n.op_type == "DequantizeLinear"}
    for dq in dq_nodes.values():
        x, scale = dq.input[0], dq.input[1]
        zp = dq.input[2] if len(dq.input) > 2 and dq.input[2] else ""
        label = dq.name or dq.output[0]
        if x in g.inits:
            n_w += 1
            bad.extend(_check_weight(g, profile, dq, label, x, scale, zp))
            continue
        q = g.producer.get(x)
        if q is None or q.op_type != "QuantizeLinear":
            bad.append(f"{label}: DequantizeLinear reads {x!r}, which is neither a constant nor a QuantizeLinear output")
            continue
        n_a += 1
        bad.extend(_check_activation(g, profile, q, dq, label, scale, zp))
    return TargetCheck(profile.name, n_w, n_a, tuple(bad))


def _zp_problems(g: _Graph, profile: TargetProfile, label: str, zp: str, kind: str, allowed: Sequence[str] | None) -> list[str]:
    out: list[str] = []
    dtype = g.dtype(zp) if zp else None
    if not zp:
        dtype = "UINT8"  # ONNX's default when the zero point is omitted
    if allowed is not None and dtype not in allowed:
        out.append(f"{label}: {kind} element type {dtype} is not run by {profile.name} (allowed: {sorted(allowed)})")
    if dtype in _WIDE and g.opset < 21:
        out.append(f"{label}: {kind} element type {dtype} needs opset 21, the model has opset {g.opset}")
    symmetric = kind == "weight" or profile.activation_symmetric
    value = g.value(zp) if zp else None
    if symmetric and value is not None and np.any(value != 0) and not profile.is_generic:
        out.append(
            f"{label}: {kind} zero point must be 0 on {profile.name} (symmetric); found {sorted(set(value.ravel().tolist()))[:4]}"
        )
    return out


def _check_weight(g: _Graph, profile: TargetProfile, dq: Any, label: str, x: str, scale: str, zp: str) -> list[str]:
    out = _zp_problems(g, profile, label, zp, "weight", None if profile.weight_dtypes is None else sorted(profile.weight_dtypes))
    xt, zt = g.dtype(x), g.dtype(zp) if zp else "UINT8"
    if xt != zt:
        out.append(f"{label}: weight integers are {xt} but the zero point is {zt}")
    init = g.inits[x]
    rank = len(init.dims)
    s = g.value(scale)
    per_channel = s is not None and s.size > 1
    consumers = g.weight_consumers(dq.output[0])
    if not consumers and dq.output[0] not in g.outputs:
        out.append(f"{label}: the dequantized weight feeds nothing")
    for c in consumers:
        if profile.weight_ops is not None and c.op_type not in profile.weight_ops:
            out.append(
                f"{label}: a quantized weight feeds {c.op_type} ({c.name}); "
                f"{profile.name} quantizes weights of {sorted(profile.weight_ops)} only"
            )
        if xt in ("INT4", "UINT4") and profile.int4_weight_ops is not None and c.op_type not in profile.int4_weight_ops:
            out.append(
                f"{label}: a 4-bit weight feeds {c.op_type} ({c.name}); "
                f"{profile.name} runs 4-bit weights on {sorted(profile.int4_weight_ops)} only"
            )
        if per_channel and not profile.is_generic:
            axis = _attr(dq, "axis", 1)
            axis = axis + rank if axis < 0 else axis
            direct = dq.output[0] in c.input[1:2]  # read as the op's weight, not through a Transpose/Reshape
            want = _output_axis(c, rank) if direct else None
            if want is not None and axis != want:
                out.append(f"{label}: per-channel axis {axis} is not the output-channel axis {want} of {c.op_type} ({c.name})")
    if per_channel and True not in profile.per_channel:
        out.append(f"{label}: {profile.name} takes per-tensor weight scales only")
    if not per_channel and False not in profile.per_channel:
        out.append(f"{label}: {profile.name} needs per-channel weight scales")
    return out


def _same(g: _Graph, a: str, b: str) -> bool:
    if a == b:
        return True
    va, vb = g.value(a), g.value(b)
    return va is not None and vb is not None and va.shape == vb.shape and bool(np.array_equal(va, vb))


def _check_activation(g: _Graph, profile: TargetProfile, q: Any, dq: Any, label: str, scale: str, zp: str) -> list[str]:
    allowed = None if profile.activation_dtypes is None else sorted(profile.activation_dtypes)
    out = _zp_problems(g, profile, label, zp, "activation", allowed)
    q_zp = q.input[2] if len(q.input) > 2 else ""
    if not _same(g, q.input[1], scale) or ((q_zp or zp) and not _same(g, q_zp, zp)):
        out.append(f"{label}: QuantizeLinear {q.name!r} and its DequantizeLinear use different scales or zero points")
    others = [c.op_type for c in g.consumers.get(q.output[0], []) if c.op_type != "DequantizeLinear"]
    if others:
        out.append(f"{label}: the quantized tensor of {q.name!r} also feeds {others}, not only DequantizeLinear")
    return out
