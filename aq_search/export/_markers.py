"""Torch side of the ONNX export: quantizer markers, input checks, opset choice, the exported graph and the
diagnosis of exporter failures (which node ONNX cannot express).
"""

from __future__ import annotations

import copy
import io
import logging
import re
import warnings
from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from .._constraints import parameter_error
from .._data import as_model_args
from .._errors import EncodingsNotComputedError, InvalidInputError
from ..quantsim import FakeQuantizer, QuantSim
from ..quantsim._functional import node_scope
from ..quantsim._layers import KNOWN_LEAVES, PASSTHROUGH_LAYERS
from ._dynamo import DYNAMO_MIN_OPSET, dynamo_available, dynamo_export
from ._dynamo import marker as dynamo_marker
from ._onnx_types import (
    _MARKER_DOMAIN,
    _TORCHSCRIPT_MAX_OPSET,
    DEFAULT_OPSET,
    INT16_OPSET,
    MIN_OPSET,
    OnnxExportError,
    _require_onnx,
)

logger = logging.getLogger(__name__)

# -- markers -------------------------------------------------------------------------------------------


class _Marker(torch.autograd.Function):
    """Identity in torch; an ``aq_export::Marker(name=...)`` node in the exported ONNX graph."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, name: str) -> Tensor:
        return x.clone()

    @staticmethod
    def symbolic(g: Any, x: Any, name: str) -> Any:
        out = g.op(f"{_MARKER_DOMAIN}::Marker", x, name_s=name)
        out.setType(x.type())
        return out


class _MarkerModule(nn.Module):
    """Stands in for a quantizer during export (an activation quantizer or a weight parametrization)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.quantizer_name = name

    def forward(self, x: Tensor) -> Tensor:
        if not x.is_floating_point():
            return x
        dyn = dynamo_marker(x, self.quantizer_name)  # the custom op, during a dynamo export
        if dyn is not None:
            return dyn
        out: Tensor = _Marker.apply(x, self.quantizer_name)
        return out


# -- checks ---------------------------------------------------------------------------------------------


def _check_sim(sim: object, who: str) -> QuantSim:
    if not isinstance(sim, QuantSim):
        raise parameter_error("sim", who, "an aq_search.QuantSim", sim)
    return sim


def _check_encodings(sim: QuantSim) -> None:
    missing = [
        name
        for name, q in {**sim.param_quantizers, **sim.activation_quantizers}.items()
        if q.enabled and q.dtype == "int" and (q.scale is None or q.zero_point is None)
    ]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise EncodingsNotComputedError(
            f"cannot export before the encodings exist: {len(missing)} enabled quantizer(s) have none ({shown}). "
            "Fix: call sim.compute_encodings(batches) or sim.load_encodings(path) first, or disable those "
            "quantizers with sim.set_enabled(...)."
        )


def _needs_int16(sim: QuantSim) -> list[str]:
    return [
        name
        for name, q in {**sim.param_quantizers, **sim.activation_quantizers}.items()
        if q.enabled and q.dtype == "int" and q.bitwidth > 8
    ]


def _choose_opset(sim: QuantSim, opset: int | None) -> int:
    wide = _needs_int16(sim)
    if opset is None:
        return INT16_OPSET if wide else DEFAULT_OPSET
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise parameter_error("opset", "export_onnx", f"an int >= {MIN_OPSET} (per-channel DequantizeLinear) or None", opset)
    if wide and opset < INT16_OPSET:
        raise InvalidInputError(
            f"quantizer(s) {wide[:5]} have more than 8 bits, which ONNX stores as int16/uint16; QuantizeLinear/"
            f"DequantizeLinear take int16 only from opset {INT16_OPSET}. Fix: pass opset={INT16_OPSET} (or None), "
            "or set those layers to 8 bits or fewer."
        )
    return opset


# -- export graph ---------------------------------------------------------------------------------------


def _export_module(sim: QuantSim) -> tuple[fx.GraphModule, dict[str, FakeQuantizer]]:
    """A float copy of the sim's model with every quantizer replaced by a marker; the quantizers by name."""
    work = copy.deepcopy(sim)
    work.unfuse_activations()
    gm = work.model
    quantizers: dict[str, FakeQuantizer] = {}
    for name, q in work.param_quantizers.items():
        module = gm.get_submodule(name.rpartition(".")[0])
        plist: Any = getattr(module, "parametrizations").weight  # noqa: B009 - typed as Tensor | Module
        if len(plist) != 1 or not isinstance(plist[0], FakeQuantizer):
            raise OnnxExportError(
                f"the weight of {name.rpartition('.')[0]!r} has other parametrizations than its quantizer; "
                "remove them before export"
            )
        plist[0] = _MarkerModule(name)
        quantizers[name] = q
    for node in gm.graph.nodes:
        name = node.meta.get("aq_quantizer")
        if name is None or node.op != "call_module":
            continue
        quantizers[name] = work.activation_quantizers[name]
        parent, _, key = str(node.target).rpartition(".")
        setattr(gm.get_submodule(parent), key, _MarkerModule(name))
    gm.eval()
    return gm, quantizers


def _default_names(gm: fx.GraphModule, dummy_input: Any, outputs: Any) -> tuple[list[str], list[str]]:
    args, kwargs = as_model_args(dummy_input)
    placeholders = [str(n.target) for n in gm.graph.nodes if n.op == "placeholder"]
    inputs = placeholders[: len(args)] + list(kwargs)
    leaves = [t for t in pytree.tree_leaves(outputs) if isinstance(t, Tensor)]
    outs = ["output"] if len(leaves) == 1 else [f"output_{i}" for i in range(len(leaves))]
    return inputs, outs


def _torch_export(
    gm: fx.GraphModule,
    dummy_input: Any,
    opset: int,
    input_names: list[str],
    output_names: list[str],
    dynamic_batch: bool,
    outputs: Any,
    use_dynamo: bool = False,
) -> Any:
    """Export ``gm`` (with markers) with the TorchScript-based or the dynamo exporter; returns the ModelProto."""
    onnx = _require_onnx()
    args, kwargs = as_model_args(dummy_input)
    flat_inputs = [t for t in [*args, *kwargs.values()] if isinstance(t, Tensor)]
    flat_outputs = [t for t in pytree.tree_leaves(outputs) if isinstance(t, Tensor)]
    dynamic_axes: dict[str, dict[int, str]] | None = None
    if dynamic_batch:
        dynamic_axes = {}
        for name, t in zip(input_names, flat_inputs):
            if t.dim() > 0:
                dynamic_axes[name] = {0: "batch"}
        for name, t in zip(output_names, flat_outputs):
            if t.dim() > 0:
                dynamic_axes[name] = {0: "batch"}
    if use_dynamo:
        return dynamo_export(gm, tuple(args), dict(kwargs), opset, input_names, output_names, dynamic_axes)
    export_args: tuple[Any, ...] = tuple(args) + ((dict(kwargs),) if kwargs else ())
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            gm,
            export_args,
            cast(Any, buffer),
            dynamo=False,
            opset_version=min(opset, _TORCHSCRIPT_MAX_OPSET),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
            custom_opsets={_MARKER_DOMAIN: 1},
        )
    return onnx.load_from_string(buffer.getvalue())


_KNOWN_EXPORTABLE: tuple[type[nn.Module], ...] = (
    tuple(t for t in KNOWN_LEAVES if t.__module__.startswith("torch.nn")) + PASSTHROUGH_LAYERS
)


def _probe_node(gm: fx.GraphModule, node: fx.Node, opset: int) -> str | None:
    """Export one node of the graph on its own; the exporter's message when that fails."""

    def value(a: Any) -> Any:
        if isinstance(a, fx.Node):
            tm = a.meta.get("tensor_meta")
            if tm is None or not hasattr(tm, "shape"):
                raise LookupError
            return (
                torch.zeros(tuple(tm.shape), dtype=tm.dtype)
                if not tm.dtype.is_floating_point
                else torch.rand(tuple(tm.shape), dtype=tm.dtype)
            )
        return a

    try:
        args = tuple(pytree.tree_map(value, list(node.args)))
        kwargs = pytree.tree_map(value, dict(node.kwargs))
    except LookupError:
        return None
    if node.op == "call_module":
        module: nn.Module = gm.get_submodule(str(node.target))
    else:
        target = node.target

        class _One(nn.Module):
            def forward(self, *a: Any) -> Any:
                if node.op == "call_method":
                    return getattr(a[0], str(target))(*a[1:], **kwargs)
                return target(*a, **kwargs)  # type: ignore[operator]

        module = _One()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, args, cast(Any, io.BytesIO()), dynamo=False, opset_version=min(opset, _TORCHSCRIPT_MAX_OPSET)
            )
    except Exception as err:  # noqa: BLE001 - any exporter failure is what we look for
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


def _called_in(node: fx.Node) -> str:
    scope = node_scope(node)
    return f", called in module {scope!r}" if scope else ""


def _locate_unsupported(gm: fx.GraphModule, err: BaseException, opset: int) -> str:
    """Name the module (or function) of the graph that the exporter could not express."""
    text = str(err)
    match = re.search(r"'((?:aten|prim|quantized)::[\w.]+)'", text)
    op = match.group(1) if match else None
    candidates: list[fx.Node] = []
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            if isinstance(module, _MarkerModule) or type(module) in _KNOWN_EXPORTABLE:
                continue
            candidates.append(node)
        elif node.op in ("call_function", "call_method"):
            candidates.append(node)
    if op is not None:
        short = op.split("::")[1].split(".")[0].lstrip("_")
        for node in candidates:
            if node.op == "call_module":
                continue
            name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
            if str(name).lstrip("_").rstrip("_") in (short, short.replace("linalg_", ""), short.replace("fft_", "")):
                return f"function {name!r} (graph node {node.name!r}{_called_in(node)}) uses {op}"
    for node in candidates:
        problem = _probe_node(gm, node, opset)
        if problem is None:
            continue
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            return f"module {str(node.target)!r} ({type(module).__name__})" + (f" uses {op}" if op else f": {problem}")
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        return f"function {name!r} (graph node {node.name!r}{_called_in(node)})" + (f" uses {op}" if op else f": {problem}")
    return f"an op of the model ({op})" if op else "an op of the model"


def _export_with_markers(
    sim: QuantSim,
    dummy_input: Any,
    opset: int,
    input_names: Sequence[str] | None,
    output_names: Sequence[str] | None,
    dynamic_batch: bool,
    exporter: str = "torchscript",
) -> tuple[Any, dict[str, FakeQuantizer], list[str], list[str], str]:
    gm, quantizers = _export_module(sim)
    args, kwargs = as_model_args(dummy_input)
    with torch.no_grad():
        outputs = gm(*args, **kwargs)
    default_in, default_out = _default_names(gm, dummy_input, outputs)
    ins = list(input_names) if input_names is not None else default_in
    outs = list(output_names) if output_names is not None else default_out
    if len(ins) != len(default_in) or len(outs) != len(default_out):
        raise InvalidInputError(
            f"export_onnx: the model takes {len(default_in)} input(s) and returns {len(default_out)} output tensor(s); "
            f"got {len(ins)} input_names and {len(outs)} output_names. Pass one name per tensor (or leave them out)."
        )
    if exporter in ("auto", "dynamo"):
        why = dynamo_available()
        if why is None and opset < DYNAMO_MIN_OPSET:
            why = f"opset {opset} was asked for; the dynamo exporter writes opset {DYNAMO_MIN_OPSET} and above"
        if why is None:
            try:
                with torch.no_grad():
                    model = _torch_export(gm, dummy_input, opset, ins, outs, dynamic_batch, outputs, use_dynamo=True)
                return model, quantizers, ins, outs, "dynamo"
            except Exception as err:  # noqa: BLE001 - reported, then the TorchScript exporter tries
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                why = f"the dynamo exporter failed ({type(err).__name__}: {first})"
        if exporter == "dynamo":
            raise OnnxExportError(f"exporter='dynamo': {why}. Fix: exporter='auto' or 'torchscript'.")
        logger.info("ONNX export: %s; using the TorchScript exporter", why)
    try:
        with torch.no_grad():
            model = _torch_export(gm, dummy_input, opset, ins, outs, dynamic_batch, outputs)
    except Exception as err:
        where = _locate_unsupported(gm, err, opset)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OnnxExportError(
            f"ONNX export failed: {where}, which the ONNX exporter cannot express at opset "
            f"{min(opset, _TORCHSCRIPT_MAX_OPSET)} ({type(err).__name__}: {first}). Fix: replace that op with ops ONNX "
            "has (or a module built from them), or try another opset=."
        ) from err
    return model, quantizers, ins, outs, "torchscript"
