"""Transformer-aware quantizer placement: which activations a deployment runtime keeps in float.

QuantSim first puts a quantizer on every value-changing op's output (see :class:`QuantSim`). Four
rules then leave some of them in float, the way ONNX Runtime's and TensorRT's transformer (BERT) QDQ
placements do; docs/transformers.md gives each rule with its public source.

1. **Input-independent values** (static, at construction): an output that depends on no float model
   input and no learned parameter -- attention masks built from an integer ``attention_mask``, position
   ids, causal masks, rotary tables from buffers -- is not quantized. A runtime constant-folds or
   computes these outside the quantized path.
2. **GEMM -> GELU**: a Linear whose only consumer is a GELU has no quantizer between the two; both
   runtimes fuse GEMM + bias + GELU and quantize the GELU output only.
3. **Residual add + LayerNorm** (``SkipLayerNormalization``): the sum of a residual add that feeds a
   LayerNorm, and the Linear output added into it, stay in float; the LayerNorm output (the next
   GEMMs' input) is quantized. Both runtimes fuse residual add + LayerNorm into one float kernel
   (ONNX Runtime ``SkipLayerNormalization``, TensorRT ``skipLayerNormPlugin``) and dequantize the GEMM
   output into it; an 8-bit range over BERT's residual stream, whose outliers are tens of times its
   typical values, costs most of the W8A8 error (Bondarenko et al., 2021).
4. **Huge constant masks and biases** (found during calibration): an add / sub / ``where`` one of whose
   operands holds values of magnitude >= :data:`MASK_MAGNITUDE` that are all one constant (``-1e4``,
   ``finfo.min``, ``-inf``: a mask fill value) gets no output quantizer, and that operand's own
   quantizer is removed too. An 8-bit range spanning the mask would swallow the scores it is added
   to; runtimes apply the mask inside the float softmax (TensorRT's fused MHA, ONNX Runtime's
   ``Attention`` op).

Each rule records why it left a tensor in float in ``sim.unquantized`` (``{quantizer name: reason}``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from . import _ops
from ._quantizer import FakeQuantizer

if TYPE_CHECKING:
    from ._sim import QuantSim

__all__ = ["MASK_MAGNITUDE", "apply_static_placement", "watch_masks"]

logger = logging.getLogger(__name__)

#: Values at least this large in magnitude, all equal, in an operand of an add/sub/where mark a mask.
MASK_MAGNITUDE = 1e3

_GELU_TYPES: tuple[type[nn.Module], ...] = (nn.GELU,)


def _quantizer_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.meta.get("aq_quantizer") is not None]


def _disable(sim: QuantSim, name: str, reason: str) -> None:
    quantizer = sim._activation.get(name)
    if quantizer is None or not quantizer.enabled:
        return
    quantizer.enabled = False
    sim.unquantized[name] = reason
    logger.info("QuantSim: %r left in float: %s", name, reason)


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _data_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes whose value depends on a float model input or a learned parameter."""
    data: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            tm = node.meta.get("tensor_meta")
            if tm is not None and getattr(tm, "dtype", torch.int64).is_floating_point:
                data.add(node)
            continue
        if node.op == "get_attr":
            obj: Any = gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part, None)
            if isinstance(obj, nn.Parameter):
                data.add(node)
            continue
        if any(a in data for a in node.all_input_nodes):
            data.add(node)
        elif node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            if not isinstance(module, FakeQuantizer) and _has_parameters(module):
                data.add(node)
    return data


def apply_static_placement(sim: QuantSim) -> None:
    """Rules 1 to 3 (see the module docstring): decided from the graph alone."""
    gm = sim.model
    data = _data_nodes(gm)
    for qnode in _quantizer_nodes(gm):
        name = qnode.meta["aq_quantizer"]
        source = qnode.args[0] if qnode.args else None
        if not isinstance(source, fx.Node):
            continue
        if source not in data:
            _disable(sim, name, "computed from integer inputs and constants only (mask / positions): no quantizer")
            continue
        if source.op == "call_module" and isinstance(gm.get_submodule(str(source.target)), nn.Linear):
            users = list(qnode.users)
            if len(users) == 1 and users[0].op == "call_module":
                consumer = gm.get_submodule(str(users[0].target))
                if isinstance(consumer, _GELU_TYPES):
                    _disable(sim, name, "Linear fused with the following GELU: only the GELU output is quantized")
    _skip_layer_norm(sim)


def _skip_layer_norm(sim: QuantSim) -> None:
    gm = sim.model
    by_name = {n.meta["aq_quantizer"]: n for n in _quantizer_nodes(gm)}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(gm.get_submodule(str(node.target)), nn.LayerNorm):
            continue
        found: list[str] = []
        for arg in node.all_input_nodes:
            sim._walk_to_quantizer(arg, found, set())
        for name in found:
            add = by_name[name].args[0]
            if not isinstance(add, fx.Node) or add.op != "call_module":
                continue
            if not isinstance(gm.get_submodule(str(add.target)), _ops.Add):
                continue
            _disable(sim, name, f"residual add fused with LayerNorm {node.target!r} (SkipLayerNormalization)")
            operands: list[str] = []
            for operand in add.all_input_nodes:
                sim._walk_to_quantizer(operand, operands, set())
            for operand_name in operands:
                qnode = by_name[operand_name]
                producer = qnode.args[0]
                if (
                    len(qnode.users) == 1  # it feeds only the residual add (a GEMM input keeps its quantizer)
                    and isinstance(producer, fx.Node)
                    and producer.op == "call_module"
                    and isinstance(gm.get_submodule(str(producer.target)), nn.Linear)
                ):
                    _disable(sim, operand_name, f"GEMM output added into the residual of LayerNorm {node.target!r}")


def _is_mask_candidate(module: nn.Module) -> bool:
    if isinstance(module, (_ops.Add, _ops.Sub)):
        return True
    return isinstance(module, _ops.FunctionalOp) and module.function == "where"


class _OperandStats:
    """Per operand: the smallest and largest value among entries with |v| >= MASK_MAGNITUDE."""

    def __init__(self) -> None:
        self.low = math.inf
        self.high = -math.inf
        self.seen = False

    def update(self, x: Tensor) -> None:
        if not x.is_floating_point() or x.numel() == 0:
            return
        self.seen = True
        huge = x[x.abs() >= MASK_MAGNITUDE]
        if huge.numel():
            self.low = min(self.low, float(huge.min()))
            self.high = max(self.high, float(huge.max()))

    @property
    def constant_mask(self) -> bool:
        return self.seen and self.low == self.high


@contextmanager
def watch_masks(sim: QuantSim) -> Iterator[None]:
    """During calibration, watch add/sub/where operands; afterwards apply rule 4.

    The rule is applied only when the body finished without raising.
    """
    gm = sim.model
    stats: dict[fx.Node, list[_OperandStats]] = {}
    handles = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = gm.get_submodule(str(node.target))
        if not _is_mask_candidate(module):
            continue
        per_operand = [_OperandStats() for _ in node.args]
        stats[node] = per_operand

        def hook(_module: nn.Module, args: tuple[Any, ...], per_operand: list[_OperandStats] = per_operand) -> None:
            for st, arg in zip(per_operand, args):
                if isinstance(arg, Tensor):
                    st.update(arg.detach())

        handles.append(module.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
    for node, per_operand in stats.items():
        for index, st in enumerate(per_operand):
            if not st.constant_mask:
                continue
            value = st.low
            for user in node.users:
                name = user.meta.get("aq_quantizer")
                if name is not None:
                    _disable(
                        sim,
                        name,
                        f"adds a constant mask of {value:.3g} (operand {index} of {node.target}): "
                        "an 8-bit range over it would swallow the other operand",
                    )
            operand = node.args[index]
            if isinstance(operand, fx.Node):
                found: list[str] = []
                sim._walk_to_quantizer(operand, found, set())
                for name in found:
                    _disable(sim, name, f"a constant mask of {value:.3g} added in {node.target}")
