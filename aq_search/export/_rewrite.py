"""ONNX graph rewriting: markers replaced by the Q/DQ pattern of each quantizer (QDQ model) or removed (FP32
model), weight integers, pruning and topological checks.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._numerics import per_channel
from ..quantsim import FakeQuantizer, QuantSim
from ._int4 import int4_tensor, uses_int4
from ._onnx_types import _MARKER_DOMAIN, _MARKER_PREFIX, OnnxExportError, _require_onnx

logger = logging.getLogger(__name__)

# -- graph rewriting ------------------------------------------------------------------------------------


def _markers_to_identity(model: Any) -> dict[str, str]:
    """Turn marker nodes into named Identity nodes (they survive version conversion); node name -> quantizer."""
    table: dict[str, str] = {}
    for i, node in enumerate(model.graph.node):
        if node.domain == _MARKER_DOMAIN:
            qname = next(a.s.decode() for a in node.attribute if a.name == "name")
            node.op_type, node.domain = "Identity", ""
            del node.attribute[:]
            node.name = f"{_MARKER_PREFIX}{i}"
            table[node.name] = qname
    keep = [o for o in model.opset_import if o.domain != _MARKER_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return table


class _Names:
    def __init__(self, model: Any) -> None:
        g = model.graph
        self.taken = {i.name for i in g.initializer} | {i.name for i in g.input} | {o.name for o in g.output}
        for n in g.node:
            self.taken.update(n.output)
            self.taken.update(n.input)
            self.taken.add(n.name)

    def new(self, base: str) -> str:
        name, i = base, 1
        while name in self.taken:
            name = f"{base}_{i}"
            i += 1
        self.taken.add(name)
        return name


def _storage(q: FakeQuantizer) -> tuple[Any, int, type[np.generic]]:
    """ONNX element type of the quantized integers of ``q``."""
    from onnx import TensorProto

    qmin, _ = q.quant_range
    wide = q.bitwidth > 8
    if qmin < 0:
        return (TensorProto.INT16, 16, np.int16) if wide else (TensorProto.INT8, 8, np.int8)
    return (TensorProto.UINT16, 16, np.uint16) if wide else (TensorProto.UINT8, 8, np.uint8)


def _qparams(q: FakeQuantizer, np_type: type[np.generic]) -> tuple[np.ndarray, np.ndarray]:
    assert q.scale is not None and q.zero_point is not None
    scale = q.scale.detach().cpu().numpy().astype(np.float32)
    zp = q.zero_point.detach().cpu().numpy().astype(np.int64).astype(np_type)
    if q.axis is None:
        return scale.reshape(()), zp.reshape(())
    return scale, zp


def _weight_integers(name: str, q: FakeQuantizer, fq: Tensor) -> Tensor:
    """The integers behind the sim's fake-quantized weight ``fq``, checked to dequantize to it exactly."""
    assert q.scale is not None and q.zero_point is not None
    s = per_channel(q.scale, fq.dim(), q.axis).to(torch.float32)
    z = per_channel(q.zero_point, fq.dim(), q.axis).to(torch.float32)
    ints = torch.round(fq / s) + z
    qmin, qmax = q.quant_range
    back = (ints - z) * s
    if not torch.equal(back, fq) or float(ints.min()) < qmin or float(ints.max()) > qmax:
        diff = float((back - fq).abs().max())
        logger.warning("weight %r: the integer weights reproduce the sim's weight up to %.3g only", name, diff)
    return ints.clamp(qmin, qmax).to(torch.int64)


def _sim_weights(sim: QuantSim) -> dict[str, tuple[Tensor, Tensor]]:
    """``{param name: (float weight, fake-quantized weight)}`` from the sim itself."""
    out: dict[str, tuple[Tensor, Tensor]] = {}
    with torch.no_grad():
        for name, q in sim.param_quantizers.items():
            module: Any = sim.layer(name.rpartition(".")[0])
            original: Tensor = module.parametrizations.weight.original
            fq: Tensor = module.weight if (q.enabled and q.dtype == "int") else original
            out[name] = (original.detach().float().cpu().clone(), fq.detach().float().cpu().clone())
    return out


def _initializer_value(model: Any, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            value: np.ndarray = numpy_helper.to_array(init)
            return value
    for node in model.graph.node:
        if node.op_type == "Constant" and name in node.output:
            for a in node.attribute:
                if a.name == "value":
                    const: np.ndarray = numpy_helper.to_array(a.t)
                    return const
    return None


def _prune(model: Any) -> None:
    """Drop initializers and Constant nodes nothing uses; clear stale value_info."""
    g = model.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep_nodes = [n for n in g.node if not (n.op_type == "Constant" and not set(n.output) & used)]
    del g.node[:]
    g.node.extend(keep_nodes)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.value_info[:]


def _resolve(subst: Mapping[str, str], name: str) -> str:
    seen = set()
    while name in subst and name not in seen:
        seen.add(name)
        name = subst[name]
    return name


def _apply_substitutions(model: Any, subst: Mapping[str, str], names: _Names) -> dict[str, str]:
    """Rewire readers of removed tensors; keep the graph output names. Returns ``{tensor: its new name}``."""
    from onnx import helper

    g = model.graph
    for node in g.node:
        for i, v in enumerate(node.input):
            node.input[i] = _resolve(subst, v)
    renamed: dict[str, str] = {}
    fixed = {i.name for i in g.input} | {i.name for i in g.initializer} | {o.name for o in g.output}
    for out in g.output:
        src = _resolve(subst, out.name)
        if src == out.name:
            continue
        producers = [n for n in g.node if src in n.output]
        if src in fixed or not producers or src in renamed:
            g.node.append(helper.make_node("Identity", [src], [out.name], name=names.new(f"{out.name}_Identity")))
            continue
        # the producer writes the output name directly; its readers follow
        for node in g.node:
            for i, v in enumerate(node.output):
                if v == src:
                    node.output[i] = out.name
            for i, v in enumerate(node.input):
                if v == src:
                    node.input[i] = out.name
        renamed[src] = out.name
    return renamed


def _build(
    base: Any,
    table: Mapping[str, str],
    quantizers: Mapping[str, FakeQuantizer],
    weights: Mapping[str, tuple[Tensor, Tensor]],
    *,
    qdq: bool,
    int4: bool = False,
) -> tuple[Any, dict[str, str], dict[str, Any], int, int]:
    """The QDQ (``qdq=True``) or FP32 model from the marked base model.

    Returns ``(model, tensor names, encodings keyed by ONNX names, #weights, #activations)``.
    """
    from onnx import TensorProto, helper, numpy_helper

    model = copy.deepcopy(base)
    g = model.graph
    names = _Names(model)
    graph_outputs = {o.name for o in g.output}
    new_nodes: list[Any] = []
    new_inits: list[Any] = []
    subst: dict[str, str] = {}  # a removed tensor -> the tensor its readers read instead
    weight_tensor: dict[str, str] = {}  # param name -> the tensor its layers read
    tensor_names: dict[str, str] = {}
    act_enc: dict[str, Any] = {}
    par_enc: dict[str, Any] = {}
    n_w = n_a = 0

    def const(base_name: str, array: np.ndarray) -> str:
        name = names.new(base_name)
        new_inits.append(numpy_helper.from_array(array, name))
        return name

    def const4(base_name: str, array: np.ndarray, signed: bool) -> str:
        name = names.new(base_name)
        new_inits.append(int4_tensor(name, array, signed))
        return name

    def node(op: str, inputs: list[str], output: str, label: str, **attrs: Any) -> None:
        new_nodes.append(helper.make_node(op, inputs, [output], name=names.new(label), **attrs))

    for n in g.node:
        qname = table.get(n.name)
        if qname is None:
            new_nodes.append(n)
            continue
        q = quantizers[qname]
        x, y = n.input[0], n.output[0]
        active = q.enabled and not (q.dtype == "float" and q.bitwidth == 32)
        if q.kind == "param":
            if qname not in weight_tensor:
                original, fq = weights[qname]
                if _initializer_value(model, x) is None:
                    raise OnnxExportError(
                        f"the weight {qname!r} is not a constant in the exported graph, so its quantizer cannot be written"
                    )
                if not active or (q.dtype == "float" and not qdq):
                    weight_tensor[qname] = const(qname, original.numpy())
                elif q.dtype == "float":
                    half = const(f"{qname}_fp16", original.numpy().astype(np.float16))
                    out = names.new(qname)
                    node("Cast", [half], out, f"{qname}_Cast", to=TensorProto.FLOAT)
                    weight_tensor[qname] = out
                elif qdq:
                    _, _, np_type = _storage(q)
                    ints = _weight_integers(qname, q, fq).numpy().astype(np_type)
                    scale, zp = _qparams(q, np_type)
                    if int4 and uses_int4(q):  # INT4/UINT4 (opset 21): the same integers, two per byte
                        signed = q.quant_range[0] < 0
                        qi = const4(f"{qname}_quantized", ints, signed)
                        zi = const4(f"{qname}_zero_point", zp, signed)
                    else:
                        qi = const(f"{qname}_quantized", ints)
                        zi = const(f"{qname}_zero_point", zp)
                    si = const(f"{qname}_scale", scale)
                    out = names.new(f"{qname}_dequantized")
                    attrs = {"axis": q.axis} if q.axis is not None else {}
                    node("DequantizeLinear", [qi, si, zi], out, f"{qname}_DequantizeLinear", **attrs)
                    weight_tensor[qname] = out
                else:
                    # AdaRounded weights are written quantize-dequantized, so that applying the encodings
                    # (round to nearest) gives AdaRound's integers back.
                    weight_tensor[qname] = const(qname, (fq if q.rounding is not None else original).numpy())
                if active:
                    n_w += 1
                if q.enabled:
                    par_enc[weight_tensor[qname]] = q.encoding_dict()
                tensor_names[qname] = weight_tensor[qname]
            subst[y] = weight_tensor[qname]
            continue
        # activation
        if not active:
            subst[y] = x
            continue
        n_a += 1
        tensor_names[qname] = x
        if not qdq:
            subst[y] = x
            act_enc[x] = q.encoding_dict()
            continue
        out = y if y in graph_outputs else names.new(f"{x}_dequantized")
        subst[y] = out
        if q.dtype == "float":
            half = names.new(f"{x}_fp16")
            node("Cast", [x], half, f"{x}_Cast_fp16", to=TensorProto.FLOAT16)
            node("Cast", [half], out, f"{x}_Cast_fp32", to=TensorProto.FLOAT)
            continue
        _, storage_bits, np_type = _storage(q)
        scale, zp = _qparams(q, np_type)
        attrs = {"axis": q.axis} if q.axis is not None else {}
        src = x
        if q.bitwidth < storage_bits:
            if q.axis is not None:
                raise OnnxExportError(
                    f"activation quantizer {qname!r}: per-channel activations below 8 bits cannot be written as Clip"
                )
            assert q.scale is not None and q.zero_point is not None
            qmin, qmax = q.quant_range
            lo = ((qmin - q.zero_point.to(torch.float32)) * q.scale).reshape(-1)
            hi = ((qmax - q.zero_point.to(torch.float32)) * q.scale).reshape(-1)
            lo_i = const(f"{x}_clip_min", np.array(float(lo[0]), dtype=np.float32))
            hi_i = const(f"{x}_clip_max", np.array(float(hi[0]), dtype=np.float32))
            src = names.new(f"{x}_clipped")
            node("Clip", [x, lo_i, hi_i], src, f"{x}_Clip")
        si = const(f"{x}_scale", scale)
        zi = const(f"{x}_zero_point", zp)
        quant = names.new(f"{x}_quantized")
        node("QuantizeLinear", [src, si, zi], quant, f"{x}_QuantizeLinear", **attrs)
        node("DequantizeLinear", [quant, si, zi], out, f"{x}_DequantizeLinear", **attrs)

    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    renamed = _apply_substitutions(model, {k: v for k, v in subst.items() if k != v}, names)
    tensor_names = {k: renamed.get(v, v) for k, v in tensor_names.items()}
    act_enc = {renamed.get(k, k): v for k, v in act_enc.items()}
    _prune(model)
    return model, tensor_names, {"activation_encodings": act_enc, "param_encodings": par_enc}, n_w, n_a


def _finalize(model: Any) -> Any:
    onnx = _require_onnx()
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        logger.debug("ONNX shape inference failed", exc_info=True)
    onnx.checker.check_model(model)
    return model


def _topo_check(model: Any) -> None:
    """Nodes must be in topological order; the rewriting keeps the exporter's order, this checks it."""
    g = model.graph
    known = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    for node in g.node:
        for i in node.input:
            if i not in known:
                raise OnnxExportError(f"internal error: ONNX node {node.name!r} reads {i!r} before it is written")
        known.update(node.output)
