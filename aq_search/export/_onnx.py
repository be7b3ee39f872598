"""ONNX export of a :class:`~aq_search.QuantSim`: a QuantizeLinear/DequantizeLinear model, the plain FP32
model and an encodings file keyed by ONNX tensor names, validated with onnxruntime.

How it works: the sim is copied, its fused activations are put back (:meth:`QuantSim.unfuse_activations`),
and every quantizer is replaced by a *marker*, an identity op that the TorchScript ONNX exporter writes as a
node carrying the quantizer's name. The float graph is exported once with these markers; the markers are
then replaced with the ``onnx`` helper API, by the exact Q/DQ pattern of each quantizer (QDQ model) or
removed (FP32 model). No name guessing: every quantizer lands on the tensor the exporter gave it.

Formats written (see :func:`export_onnx`):

* weights (symmetric, signed grid): the quantized integers as an ``int8`` initializer (``int16`` for 9..16
  bits) plus ``DequantizeLinear`` (``axis`` for per-channel encodings). Bit-widths below 8 use ``int8``
  storage holding only the narrower range (e.g. -8..7 for 4 bits). The integers are read back from the
  sim's own fake-quantized weight, so the dequantized ONNX weights equal the sim's bit for bit (AdaRound
  included).
* activations (asymmetric, unsigned grid): ``QuantizeLinear -> DequantizeLinear`` with ``uint8``
  (``uint16`` for 9..16 bits) zero points. Below 8 bits a ``Clip`` to the representable
  ``[(0 - zp) * scale, (2**b - 1 - zp) * scale]`` comes first, because QuantizeLinear saturates to the
  storage type's range, not to ``b`` bits; with the Clip, onnxruntime reproduces the sim's clamping.
* ``dtype="float"`` quantizers: ``Cast`` to float16 and back (16 bits); nothing for 32 bits.
* int16/uint16 QuantizeLinear/DequantizeLinear need opset 21 (onnxruntime 1.32 runs them); the default
  opset is 17, or 21 when a quantizer has more than 8 bits. The graph is exported at opset <= 20 (the
  TorchScript exporter's limit; torch 2.13 still ships it, and it needs no onnxscript) and converted with
  ``onnx.version_converter`` above that.

Validation (:func:`validate_onnx`) runs the QDQ model in onnxruntime and compares it with the sim. With
onnxruntime's float execution of the Q/DQ graph (optimization level ``"basic"``) the outputs equal the sim's
up to float accumulation order (a few quantization steps deep in a network, the same spread torch itself
shows between batch sizes).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from .._data import as_model_args, move_to
from .._errors import AQSearchError, EncodingsNotComputedError, InvalidInputError
from ..quantsim import ENCODINGS_VERSION, FakeQuantizer, QuantSim
from ..quantsim._prepare import _KNOWN_LEAVES, PASSTHROUGH_LAYERS, _scope
from ._aimet import AIMET_LEGACY_VERSION, AIMET_V1_VERSION, to_aimet_v1
from ._dynamo import DYNAMO_MIN_OPSET, dynamo_available, dynamo_export
from ._dynamo import marker as dynamo_marker
from ._int4 import INT4_OPSET, int4_tensor, resolve_int4, uses_int4
from ._providers import resolve_providers

__all__ = [
    "DEFAULT_OPSET",
    "ONNX_ENCODINGS_VERSION",
    "OnnxExport",
    "OnnxExportError",
    "OnnxValidation",
    "export_onnx",
    "validate_onnx",
]

logger = logging.getLogger(__name__)

#: Opset used when every quantizer has 8 bits or fewer.
DEFAULT_OPSET = 17
#: Opset needed for int16/uint16 QuantizeLinear/DequantizeLinear (quantizers of 9..16 bits).
INT16_OPSET = 21
#: Per-channel DequantizeLinear (the ``axis`` attribute) needs opset 13.
MIN_OPSET = 13
#: The highest opset the TorchScript-based exporter writes; higher opsets are reached by conversion.
_TORCHSCRIPT_MAX_OPSET = 20
#: ``version`` of the encodings JSON written next to the FP32 model (keys are ONNX tensor names).
ONNX_ENCODINGS_VERSION = ENCODINGS_VERSION

_MARKER_DOMAIN = "aq_export"
_MARKER_PREFIX = "aq_export_marker_"


class OnnxExportError(AQSearchError):
    """The model cannot be written as ONNX (an op ONNX cannot express, a missing package ...)."""


# -- results ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OnnxValidation:
    """How the exported QDQ model, run by onnxruntime, agrees with the sim.

    Attributes:
        num_samples: samples compared (the first dimension of the inputs).
        top1_agreement: share of samples (and positions, for dense outputs) whose argmax over dim 1 is the
            same in onnxruntime and in the sim; ``None`` when the outputs have no class dimension.
        max_abs_error / mean_abs_error: over every output element.
        max_abs_output: the largest sim output magnitude (a scale for the errors).
        output_quantum: the scale (step) of the sim's quantizer on the first model output, when it has
            one; ``max_abs_error / output_quantum`` is the worst error in quantization steps.
        exact_fraction: share of output elements that are bit-identical.
        optimization_level: onnxruntime's graph optimization level used (``"all"``, ``"extended"``,
            ``"basic"`` or ``"disabled"``).
        disabled_optimizers: onnxruntime graph transformers that were switched off.
        providers: the onnxruntime execution providers the session used, in priority order.
    """

    num_samples: int
    top1_agreement: float | None
    max_abs_error: float
    mean_abs_error: float
    max_abs_output: float
    output_quantum: float | None
    exact_fraction: float
    optimization_level: str
    disabled_optimizers: tuple[str, ...] = ()
    providers: tuple[str, ...] = ("CPUExecutionProvider",)

    @property
    def max_error_in_quanta(self) -> float | None:
        if self.output_quantum is None or self.output_quantum <= 0:
            return None
        return self.max_abs_error / self.output_quantum

    def __str__(self) -> str:
        agree = "n/a" if self.top1_agreement is None else f"{self.top1_agreement:.4f}"
        quanta = self.max_error_in_quanta
        q = f" ({quanta:.2f} output steps)" if quanta is not None else ""
        off = f", without {', '.join(self.disabled_optimizers)}" if self.disabled_optimizers else ""
        return (
            f"onnxruntime vs sim on {self.num_samples} samples (optimization {self.optimization_level}{off}): "
            f"top-1 agreement {agree}, max abs error {self.max_abs_error:.4g}{q}, mean abs error {self.mean_abs_error:.3g}, "
            f"{100 * self.exact_fraction:.2f}% of outputs identical, max |output| {self.max_abs_output:.4g}"
        )


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the QDQ model (QuantizeLinear/DequantizeLinear around every quantized tensor).
        fp32_path: the plain FP32 model (AdaRounded weights as their quantize-dequantized values).
        encodings_path: the encodings JSON for ``fp32_path``, keyed by its ONNX tensor names.
        opset: the ONNX opset of both models.
        input_names / output_names: the models' graph inputs and outputs.
        tensor_names: sim quantizer name (``"conv1"``, ``"conv1.weight"``, an input name) -> ONNX tensor
            name in ``fp32_path`` and in the encodings file (a model output's encoding is on the output).
        qdq_tensor_names: the same for the QDQ model: the float tensor that is quantized (the input of
            the Clip/QuantizeLinear pattern; its scale and zero point are ``<name>_scale`` and
            ``<name>_zero_point``), and for weights the DequantizeLinear output. They equal :attr:`tensor_names` except for model
            outputs, whose name the DequantizeLinear output carries there.
        num_quantized_weights / num_quantized_activations: Q/DQ patterns written (float16 casts included).
        float_weights: weights the sim leaves in float (quantizer disabled) or casts to float16. Note that
            onnxruntime's ``WeightBiasQuantization`` transformer quantizes such weights to int8 when the
            layer sits between quantized tensors; switch it off where that layer must stay float.
        validation: onnxruntime vs sim figures, when validation ran.
        exporter: the PyTorch ONNX exporter that wrote the graph (``"dynamo"`` or ``"torchscript"``).
    """

    path: str
    fp32_path: str
    encodings_path: str
    opset: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    tensor_names: Mapping[str, str] = field(default_factory=dict)
    qdq_tensor_names: Mapping[str, str] = field(default_factory=dict)
    num_quantized_weights: int = 0
    num_quantized_activations: int = 0
    float_weights: tuple[str, ...] = ()
    validation: OnnxValidation | None = None
    exporter: str = "torchscript"


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


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError as err:
        raise OnnxExportError(
            "ONNX export needs the 'onnx' package (and 'onnxruntime' for validation). "
            "Install them with: pip install 'aq-search[onnx]'"
        ) from err
    return onnx


def _require_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise OnnxExportError(
            "validating the ONNX model needs 'onnxruntime'. Install it with: pip install 'aq-search[onnx]' "
            "(or pass validate=False to export_onnx)"
        ) from err
    return onnxruntime


# -- checks ---------------------------------------------------------------------------------------------


def _check_sim(sim: object, who: str) -> QuantSim:
    if not isinstance(sim, QuantSim):
        raise InvalidInputError(f"The 'sim' parameter of {who} must be an aq_search.QuantSim. Got {type(sim).__name__} instead.")
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
            "Fix: call sim.compute_encodings(forward_fn) or sim.load_encodings(path) first, or disable those "
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
        raise InvalidInputError(
            f"The 'opset' parameter of export_onnx must be an int >= {MIN_OPSET} (per-channel DequantizeLinear) or None. "
            f"Got {opset!r} instead."
        )
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
    tuple(t for t in _KNOWN_LEAVES if t.__module__.startswith("torch.nn")) + PASSTHROUGH_LAYERS
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
    scope = _scope(node)
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
    shape = [1] * fq.dim()
    if q.axis is not None:
        shape[q.axis] = -1
        s = q.scale.reshape(shape).to(torch.float32)
        z = q.zero_point.reshape(shape).to(torch.float32)
    else:
        s = q.scale.reshape(()).to(torch.float32)
        z = q.zero_point.reshape(()).to(torch.float32)
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


def _save(model: Any, path: Path) -> None:
    onnx = _require_onnx()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if model.ByteSize() > 1_900_000_000:
        onnx.save_model(model, os.fspath(tmp), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save_model(model, os.fspath(tmp))
    os.replace(tmp, path)


def _side_paths(path: Path) -> tuple[Path, Path]:
    stem = path.name[: -len(".onnx")] if path.name.endswith(".onnx") else path.name
    return path.with_name(f"{stem}_fp32.onnx"), path.with_name(f"{stem}_fp32.encodings.json")


def export_onnx(
    sim: QuantSim,
    dummy_input: Any = None,
    path: str | os.PathLike[str] = "model.onnx",
    *,
    opset: int | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_batch: bool = True,
    validate: bool = True,
    validation_inputs: Any = None,
    int4_weights: bool | None = None,
    providers: Sequence[str] | str | None = None,
    encodings_format: str = AIMET_LEGACY_VERSION,
    exporter: str = "auto",
) -> OnnxExport:
    """Write the sim as an ONNX model with QuantizeLinear/DequantizeLinear, plus the FP32 model and encodings.

    Three files are written:

    * ``path`` (e.g. ``model.onnx``): the QDQ model. Weights are stored as their quantized integers
      (``int8``; ``int16`` above 8 bits) with a ``DequantizeLinear`` (per-channel ``axis`` where the sim is
      per channel); each quantized activation gets ``QuantizeLinear -> DequantizeLinear`` (``uint8``;
      ``uint16`` above 8 bits), preceded by a ``Clip`` to the representable range below 8 bits; float16
      quantizers become two ``Cast`` nodes. Every layer keeps its own bit-width.
    * ``<stem>_fp32.onnx``: the same graph in plain float (AdaRounded weights as their quantize-dequantized
      values, so a toolchain that applies the encodings reproduces AdaRound).
    * ``<stem>_fp32.encodings.json``: the sim's encodings (AIMET layout) keyed by the FP32 model's tensor
      names (weights keep their torch names, e.g. ``"features.0.weight"``).

    Args:
        sim: a calibrated :class:`~aq_search.QuantSim` (or one with loaded encodings).
        dummy_input: one batch to trace with; ``None`` uses ``sim.dummy_input``.
        path: where the QDQ model goes; the other two files are written beside it.
        opset: ONNX opset; ``None`` picks 18 (17 with the TorchScript exporter), or 21 when a quantizer has
            more than 8 bits or a weight is written as INT4.
        input_names / output_names: graph input/output names (default: the model's argument names;
            ``"output"`` or ``"output_<i>"``).
        dynamic_batch: make the first dimension of inputs and outputs dynamic.
        validate: run the QDQ model in onnxruntime and compare it with the sim (needs onnxruntime; with
            :func:`validate_onnx`'s defaults, and without onnxruntime's ``WeightBiasQuantization`` when some
            weights stay float, see :attr:`OnnxExport.float_weights`).
        validation_inputs: inputs for that comparison (a batch or a list of batches, see
            :func:`validate_onnx`); default: the dummy input.
        int4_weights: store weights of 4 bits or fewer as ONNX ``INT4``/``UINT4`` (half the bytes of
            an ``int8`` container; needs opset 21). ``None``: whenever such weights exist and ``opset`` is
            ``None`` or >= 21 (the opset then becomes at least 21); ``False``: ``int8`` containers at any
            opset >= 13 (the same integers, so both files compute the same outputs).
        providers: onnxruntime execution providers for the validation (see :func:`validate_onnx`).
        exporter: ``"auto"`` (the default): PyTorch's dynamo-based exporter (``torch.onnx.export(...,
            dynamo=True)``, needs ``onnxscript``; opset 18 or more), falling back to the TorchScript exporter
            when it is missing or fails (logged); ``"dynamo"``: that exporter or an error; ``"torchscript"``:
            the TorchScript exporter (opset <= 20 written, higher opsets by conversion).
        encodings_format: AIMET's encodings layout for ``<stem>_fp32.encodings.json``: ``"0.6.1"`` (tensor
            name -> list of ``{bitwidth, dtype, is_symmetric, max, min, offset, scale}``) or ``"1.0.0"``
            (lists of named entries; see ``aq_search/export/_aimet.py``).

    Returns:
        An :class:`OnnxExport` with the paths, tensor names and validation figures.

    Raises:
        EncodingsNotComputedError: an enabled quantizer has no encoding yet.
        OnnxExportError: the model has an op ONNX cannot express (the message names the module), or
            the ``onnx`` package is missing.

    Example:
        >>> export = aq_search.export_onnx(sim, x, "out/model.onnx")         # doctest: +SKIP
        >>> print(export.validation)                                            # doctest: +SKIP
    """
    sim = _check_sim(sim, "export_onnx")
    _require_onnx()
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(f"The 'path' parameter of export_onnx must be a file path. Got {type(path).__name__} instead.")
    if not isinstance(dynamic_batch, bool):
        raise InvalidInputError(f"The 'dynamic_batch' parameter of export_onnx must be a bool. Got {dynamic_batch!r} instead.")
    _check_encodings(sim)
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise InvalidInputError(
            f"The 'exporter' parameter of export_onnx must be 'auto', 'dynamo' or 'torchscript'. Got {exporter!r} instead."
        )
    if encodings_format not in (AIMET_LEGACY_VERSION, AIMET_V1_VERSION):
        raise InvalidInputError(
            f"The 'encodings_format' parameter of export_onnx must be {AIMET_LEGACY_VERSION!r} or {AIMET_V1_VERSION!r} "
            f"(AIMET's encodings layouts). Got {encodings_format!r} instead."
        )
    dummy = sim.dummy_input if dummy_input is None else dummy_input
    as_model_args(dummy)
    dummy = move_to(dummy, _device(sim))
    chosen = _choose_opset(sim, opset)
    int4 = resolve_int4(int4_weights, sim.param_quantizers, opset)
    if int4:
        chosen = max(chosen, INT4_OPSET)
    if opset is None and exporter != "torchscript" and dynamo_available() is None:
        chosen = max(chosen, DYNAMO_MIN_OPSET)  # the dynamo exporter's lowest opset
    out_path = Path(path)
    if out_path.suffix != ".onnx":
        out_path = out_path.with_name(out_path.name + ".onnx")
    fp32_path, enc_path = _side_paths(out_path)

    base, quantizers, ins, outs, used = _export_with_markers(
        sim, dummy, chosen, input_names, output_names, dynamic_batch, exporter
    )
    table = _markers_to_identity(base)
    if used == "dynamo":
        chosen = max(chosen, DYNAMO_MIN_OPSET)  # written at that opset directly
    elif chosen > _TORCHSCRIPT_MAX_OPSET:
        from onnx import version_converter

        try:
            base = version_converter.convert_version(base, chosen)
        except Exception as err:
            raise OnnxExportError(
                f"converting the exported graph from opset {_TORCHSCRIPT_MAX_OPSET} to {chosen} failed: {err}. "
                f"Fix: use opset <= {_TORCHSCRIPT_MAX_OPSET} (needs every quantizer at 8 bits or fewer)."
            ) from err
    weights = _sim_weights(sim)
    qdq_model, qdq_names, _, n_w, n_a = _build(base, table, quantizers, weights, qdq=True, int4=int4)
    fp32_model, tensor_names, encodings, _, _ = _build(base, table, quantizers, weights, qdq=False)
    for m in (qdq_model, fp32_model):
        _topo_check(m)
        m.producer_name = "aq-search"
    if int4:
        qdq_model.ir_version = max(qdq_model.ir_version, 10)  # INT4/UINT4 element types: IR version 10
    qdq_model = _finalize(qdq_model)
    fp32_model = _finalize(fp32_model)
    _save(qdq_model, out_path)
    _save(fp32_model, fp32_path)
    data = {
        "version": ONNX_ENCODINGS_VERSION,
        "onnx_model": fp32_path.name,
        **encodings,
        "quantizer_args": sim.encodings()["quantizer_args"],
    }
    if encodings_format == AIMET_V1_VERSION:
        data = to_aimet_v1(data)
    tmp = enc_path.with_name(enc_path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, enc_path)
    logger.info(
        "exported %s (%d weight and %d activation quantizers, opset %d), %s and %s",
        out_path,
        n_w,
        n_a,
        chosen,
        fp32_path.name,
        enc_path.name,
    )
    float_weights = tuple(name for name, q in sim.param_quantizers.items() if not q.enabled or q.dtype == "float")
    if float_weights:
        logger.warning(
            "weights %s stay float in the ONNX model; onnxruntime's WeightBiasQuantization transformer quantizes float "
            "weights of a Conv/Gemm between quantized tensors to int8. To keep them float, create the session with "
            "disabled_optimizers=['WeightBiasQuantization'].",
            list(float_weights[:8]),
        )
    validation = None
    if validate:
        inputs = validation_inputs if validation_inputs is not None else dummy
        off = ("WeightBiasQuantization",) if float_weights else ()
        validation = validate_onnx(out_path, sim, inputs, disabled_optimizers=off, providers=providers)
        logger.info("%s", validation)
        if validation.top1_agreement is not None and validation.top1_agreement < 0.99:
            logger.warning(
                "the exported ONNX model agrees with the sim on only %.1f%% of top-1 predictions", 100 * validation.top1_agreement
            )
    return OnnxExport(
        path=os.fspath(out_path),
        fp32_path=os.fspath(fp32_path),
        encodings_path=os.fspath(enc_path),
        opset=chosen,
        input_names=tuple(ins),
        output_names=tuple(outs),
        tensor_names=tensor_names,
        qdq_tensor_names=qdq_names,
        num_quantized_weights=n_w,
        num_quantized_activations=n_a,
        float_weights=float_weights,
        validation=validation,
        exporter=used,
    )


# -- validation -----------------------------------------------------------------------------------------

_LEVELS = ("all", "extended", "basic", "disabled")


def _batches(inputs: Any) -> list[Any]:
    if isinstance(inputs, list):
        if not inputs:
            raise InvalidInputError("validate_onnx: 'inputs' is an empty list; pass a batch or a list of batches.")
        return inputs
    if isinstance(inputs, Iterable) and not isinstance(inputs, (Tensor, tuple, Mapping, str, bytes)):
        return list(inputs)
    return [inputs]


def _device(sim: QuantSim) -> torch.device:
    first = next(iter(sim.model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _output_quantum(sim: QuantSim) -> float | None:
    out = next((n for n in sim.model.graph.nodes if n.op == "output"), None)
    if out is None:
        return None
    first = next((a for a in pytree.tree_leaves(out.args) if isinstance(a, fx.Node)), None)
    name = first.meta.get("aq_quantizer") if first is not None else None
    if name is None:
        return None
    q = sim.activation_quantizers[name]
    if not q.enabled or q.dtype != "int" or q.scale is None:
        return None
    return float(q.scale.reshape(-1)[0])


def validate_onnx(
    path: str | os.PathLike[str],
    sim: QuantSim,
    inputs: Any,
    *,
    batch_size: int = 64,
    optimization_level: str = "basic",
    disabled_optimizers: Sequence[str] = (),
    providers: Sequence[str] | str | None = None,
) -> OnnxValidation:
    """Run the exported model in onnxruntime and compare its outputs with ``sim.model``'s.

    Args:
        path: an ONNX model written by :func:`export_onnx` (the QDQ model, or the FP32 one with a float sim).
        sim: the sim it was exported from.
        inputs: one batch (a tensor, a tuple of tensors for several inputs, or a dict of keyword inputs) or a
            list of such batches. Batches are split into chunks of ``batch_size`` (or the model's fixed
            batch size).
        batch_size: samples per onnxruntime call.
        optimization_level: onnxruntime graph optimizations. ``"basic"`` (the default) runs every
            QuantizeLinear/DequantizeLinear as written around float ops, which reproduces the sim up to
            float accumulation order. ``"extended"`` and ``"all"`` (onnxruntime's default) also fuse
            DQ -> op -> Q into integer kernels (QLinearConv, QGemm, QLinearAdd ...): on x86 CPUs without
            VNNI these multiply uint8 x int8 with 16-bit saturation, so 8-bit weights can be off by tens of
            quantization steps (onnxruntime's documented ``reduce_range`` issue; 7-bit weights avoid it).
            ``"disabled"`` turns every optimization off.
        disabled_optimizers: onnxruntime graph transformers to switch off, e.g.
            ``["WeightBiasQuantization"]``: from ``"basic"`` on, onnxruntime quantizes float weights of a
            Conv/Gemm between quantized tensors to int8 per tensor (and biases to int32), which the sim does
            not do for layers it keeps in float.
        providers: onnxruntime execution providers in priority order (e.g. ``["CUDAExecutionProvider",
            "CPUExecutionProvider"]``); default CPU only. ``"available"`` takes every provider this
            onnxruntime build offers (``onnxruntime.get_available_providers()``). A provider the build
            lacks is an error naming the available ones.

    Returns:
        The agreement figures (:class:`OnnxValidation`).
    """
    sim = _check_sim(sim, "validate_onnx")
    ort = _require_ort()
    if optimization_level not in _LEVELS:
        raise InvalidInputError(
            f"The 'optimization_level' parameter of validate_onnx must be one of {_LEVELS}. Got {optimization_level!r} instead."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(
            f"The 'batch_size' parameter of validate_onnx must be a positive int. Got {batch_size!r} instead."
        )
    level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[optimization_level]
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.log_severity_level = 3
    if isinstance(disabled_optimizers, str) or not all(isinstance(d, str) for d in disabled_optimizers):
        raise InvalidInputError(
            "The 'disabled_optimizers' parameter of validate_onnx must be a list of onnxruntime transformer names. "
            f"Got {disabled_optimizers!r} instead."
        )
    chosen = resolve_providers(providers, ort.get_available_providers())
    session = ort.InferenceSession(
        os.fspath(path), options, providers=list(chosen), disabled_optimizers=list(disabled_optimizers) or None
    )
    feeds_meta = session.get_inputs()
    fixed = feeds_meta[0].shape[0] if feeds_meta and feeds_meta[0].shape else None
    chunk = fixed if isinstance(fixed, int) and fixed > 0 else batch_size

    sim_out: list[list[Tensor]] = []
    ort_out: list[list[np.ndarray]] = []
    count = 0
    device = _device(sim)
    training = sim.model.training
    sim.model.eval()
    try:
        for batch in _batches(inputs):
            args, kwargs = as_model_args(batch)
            tensors = [*args, *kwargs.values()]
            if not tensors or not all(isinstance(t, Tensor) for t in tensors):
                raise InvalidInputError("validate_onnx: every input must be a tensor.")
            if len(tensors) != len(feeds_meta):
                raise InvalidInputError(f"validate_onnx: the model takes {len(feeds_meta)} input(s); a batch has {len(tensors)}.")
            n = int(tensors[0].shape[0]) if tensors[0].dim() else 1
            for start in range(0, n, chunk):
                stop = start + chunk
                if fixed == chunk and stop > n:
                    break
                part_args = [a[start:stop] for a in args]
                part_kwargs = {k: v[start:stop] for k, v in kwargs.items()}
                with torch.no_grad():
                    ref = sim.model(*move_to(part_args, device), **move_to(part_kwargs, device))
                sim_out.append([t.detach().float().cpu() for t in pytree.tree_leaves(ref) if isinstance(t, Tensor)])
                feed = {m.name: t.detach().cpu().numpy() for m, t in zip(feeds_meta, [*part_args, *part_kwargs.values()])}
                ort_out.append(session.run(None, feed))
                count += int(part_args[0].shape[0]) if part_args else int(next(iter(part_kwargs.values())).shape[0])
    finally:
        sim.model.train(training)
    if not sim_out:
        raise InvalidInputError(
            f"validate_onnx: no complete batch of {chunk} sample(s) to compare (the model's batch size is fixed)."
        )
    max_err = 0.0
    total_err = 0.0
    total_n = 0
    max_out = 0.0
    agree = 0
    positions = 0
    exact = 0
    for ref_list, got_list in zip(sim_out, ort_out):
        if len(ref_list) != len(got_list):
            raise InvalidInputError(f"validate_onnx: the ONNX model returns {len(got_list)} outputs, the sim {len(ref_list)}.")
        for i, (ref, got_np) in enumerate(zip(ref_list, got_list)):
            got = torch.from_numpy(np.asarray(got_np, dtype=np.float32))
            if got.shape != ref.shape:
                raise InvalidInputError(
                    f"validate_onnx: output {i} has shape {tuple(got.shape)} in ONNX and {tuple(ref.shape)} in the sim."
                )
            diff = (got - ref).abs()
            if diff.numel():
                max_err = max(max_err, float(diff.max()))
                total_err += float(diff.sum())
                exact += int((diff == 0).sum())
                total_n += diff.numel()
                max_out = max(max_out, float(ref.abs().max()))
            if i == 0 and ref.dim() >= 2 and ref.shape[1] >= 2:
                agree += int((got.argmax(1) == ref.argmax(1)).sum())
                positions += got.argmax(1).numel()
    return OnnxValidation(
        num_samples=count,
        top1_agreement=agree / positions if positions else None,
        max_abs_error=max_err,
        mean_abs_error=total_err / max(1, total_n),
        max_abs_output=max_out,
        output_quantum=_output_quantum(sim),
        exact_fraction=exact / max(1, total_n),
        optimization_level=optimization_level,
        disabled_optimizers=tuple(disabled_optimizers),
        providers=tuple(session.get_providers()),
    )
