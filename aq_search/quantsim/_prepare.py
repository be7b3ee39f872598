"""Model preparation: trace with torch.fx and turn functional ops into modules.

After :func:`prepare_model` every value-changing op of the model is a module call in a
``torch.fx.GraphModule``, so each gets its own quantizer and can be addressed by name. Data
movement (``view``, ``permute``, ``getitem``, ``flatten`` ...) stays functional: it does not change
values, so it needs no quantizer.
"""

from __future__ import annotations

import copy
import inspect
import logging
import operator
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.utils import _pytree as pytree

from .._data import as_model_args
from .._device import check_same_device
from .._errors import InvalidInputError, ModelPreparationError
from . import _ops
from ._capture import capture_with_export, install_module, is_conv1d_gemm, is_data_movement_target

__all__ = [
    "PreparationReport",
    "Problem",
    "is_prepared",
    "prepare_model",
    "propagate_shapes",
    "validate_model",
]

logger = logging.getLogger(__name__)

_META_KEY = "aq_search"

# -- module taxonomy ----------------------------------------------------------------------------------
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
    nn.Embedding,
)
#: Ops whose output has the same values (or a subset) as their input: no quantizer needed.
PASSTHROUGH_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Flatten,
    nn.Unflatten,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ReflectionPad1d,
    nn.ReflectionPad2d,
    nn.ReplicationPad1d,
    nn.ReplicationPad2d,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.ChannelShuffle,
    _ops.Pad,
)
#: Activations a preceding layer's output quantizer is fused with (only the activation's output is quantized).
FUSABLE_ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
#: Layers whose output quantizer is fused into a following BatchNorm / ReLU.
FUSABLE_PRODUCERS: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    _ops.Add,
)
BATCHNORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_KNOWN_LEAVES: tuple[type[nn.Module], ...] = (
    WEIGHT_LAYERS
    + PASSTHROUGH_LAYERS
    + BATCHNORMS
    + (
        nn.ReLU,
        nn.ReLU6,
        nn.Hardtanh,
        nn.GELU,
        nn.SiLU,
        nn.Sigmoid,
        nn.Tanh,
        nn.Hardswish,
        nn.Hardsigmoid,
        nn.LeakyReLU,
        nn.PReLU,
        nn.ELU,
        nn.Softplus,
        nn.Mish,
        nn.Softmax,
        nn.LogSoftmax,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.InstanceNorm1d,
        nn.InstanceNorm2d,
        nn.AvgPool1d,
        nn.AvgPool2d,
        nn.AvgPool3d,
        nn.AdaptiveAvgPool1d,
        nn.AdaptiveAvgPool2d,
        nn.AdaptiveAvgPool3d,
        nn.Upsample,
        nn.UpsamplingNearest2d,
        nn.UpsamplingBilinear2d,
        _ops.Add,
        _ops.Sub,
        _ops.Mul,
        _ops.Div,
        _ops.MatMul,
        _ops.Concat,
        _ops.Mean,
        _ops.FunctionalOp,
    )
)

# -- functional op table ------------------------------------------------------------------------------
_BINARY: dict[Any, type[nn.Module]] = {
    operator.add: _ops.Add,
    operator.iadd: _ops.Add,
    torch.add: _ops.Add,
    operator.sub: _ops.Sub,
    operator.isub: _ops.Sub,
    torch.sub: _ops.Sub,
    operator.mul: _ops.Mul,
    operator.imul: _ops.Mul,
    torch.mul: _ops.Mul,
    operator.truediv: _ops.Div,
    operator.itruediv: _ops.Div,
    torch.div: _ops.Div,
    operator.matmul: _ops.MatMul,
    torch.matmul: _ops.MatMul,
    torch.bmm: _ops.MatMul,
}
_BINARY_METHODS: dict[str, type[nn.Module]] = {
    "add": _ops.Add,
    "add_": _ops.Add,
    "sub": _ops.Sub,
    "sub_": _ops.Sub,
    "mul": _ops.Mul,
    "mul_": _ops.Mul,
    "div": _ops.Div,
    "div_": _ops.Div,
    "matmul": _ops.MatMul,
    "bmm": _ops.MatMul,
}
_UNARY: dict[Any, type[nn.Module]] = {
    F.relu: nn.ReLU,
    torch.relu: nn.ReLU,
    F.relu6: nn.ReLU6,
    F.silu: nn.SiLU,
    torch.sigmoid: nn.Sigmoid,
    F.sigmoid: nn.Sigmoid,
    torch.tanh: nn.Tanh,
    F.tanh: nn.Tanh,
    F.hardswish: nn.Hardswish,
    F.hardsigmoid: nn.Hardsigmoid,
    F.mish: nn.Mish,
    F.softplus: nn.Softplus,
    F.elu: nn.ELU,
}
_UNARY_METHODS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu_": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}
_DATA_MOVEMENT_FUNCTIONS = {
    operator.getitem,
    getattr,
    torch.flatten,
    torch.reshape,
    torch.transpose,
    torch.permute,
    torch.squeeze,
    torch.unsqueeze,
    torch.stack,
    torch.chunk,
    torch.split,
    torch.narrow,
    torch.cat,  # only reached for non-tensor arguments
    F.dropout,
    torch.masked_fill,
}
_DATA_MOVEMENT_METHODS = {
    "view",
    "view_as",
    "reshape",
    "permute",
    "transpose",
    "flatten",
    "contiguous",
    "squeeze",
    "unsqueeze",
    "expand",
    "expand_as",
    "repeat",
    "size",
    "dim",
    "chunk",
    "split",
    "unbind",
    "t",
    "to",
    "type",
    "float",
    "half",
    "double",
    "detach",
    "clone",
    "narrow",
    "select",
    "masked_fill",
    "masked_fill_",
    "type_as",
    "long",
    "int",
    "bool",
    "numel",
}


@dataclass(frozen=True)
class Problem:
    """One finding of :func:`validate_model`."""

    severity: Literal["error", "warning", "info"]
    where: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"[{self.severity}] {self.where}: {self.message}"
        return f"{text} Fix: {self.fix}" if self.fix else text


@dataclass(frozen=True)
class PreparationReport:
    """What :func:`prepare_model` changed and what it found."""

    changes: tuple[str, ...] = ()
    problems: tuple[Problem, ...] = ()
    input_names: tuple[str, ...] = ()
    num_weight_layers: int = 0
    num_quantizable_ops: int = 0
    #: ``"torch.export"`` or ``"torch.fx"``: the capture front end that produced the graph.
    front_end: str = ""

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "error")

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "warning")

    @property
    def ok(self) -> bool:
        """True when nothing blocks quantization."""
        return not self.errors

    def __str__(self) -> str:
        lines = [f"model preparation: {len(self.changes)} change(s), {len(self.problems)} finding(s)"]
        if self.front_end:
            lines.append(f"  captured with {self.front_end}")
        lines += [f"  changed: {c}" for c in self.changes]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


@dataclass
class _State:
    changes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    front_end: str = ""


class _Tracer(fx.Tracer):
    def __init__(self, leaf_types: tuple[type[nn.Module], ...], leaf_names: frozenset[str]) -> None:
        super().__init__()
        self._leaf_types = leaf_types
        self._leaf_names = leaf_names

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self._leaf_names or (self._leaf_types and isinstance(m, self._leaf_types)):
            return True
        if type(m).__module__.startswith("aq_search."):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def is_prepared(model: nn.Module) -> bool:
    """True for a model returned by :func:`prepare_model` (or a technique applied to one)."""
    return isinstance(model, fx.GraphModule) and _META_KEY in getattr(model, "meta", {})


def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"model must be a torch.nn.Module (a trained FP32 model). Got {type(model).__name__} instead.")
    return model


def _run(model: nn.Module, dummy_input: Any) -> Any:
    args, kwargs = as_model_args(dummy_input)
    with torch.no_grad():
        return model(*args, **kwargs)


def check_dummy_input(model: nn.Module, dummy_input: Any) -> Any:
    """Run the model once; a clear error when it rejects ``dummy_input``. Returns the output."""
    _check_required_args(model, dummy_input)
    check_same_device(model, dummy_input)
    training = model.training
    model.eval()
    try:
        return _run(model, dummy_input)
    except InvalidInputError:
        raise
    except Exception as err:
        shapes = pytree.tree_map(lambda t: tuple(t.shape) if isinstance(t, Tensor) else t, dummy_input)
        raise InvalidInputError(
            f"The model rejected dummy_input (shapes {shapes}): {type(err).__name__}: {err}. "
            "dummy_input must be something the model accepts: a tensor for model(x), a tuple for model(*inputs), "
            "or a dict for model(**inputs), with the shape, dtype and device of one real batch."
        ) from err
    finally:
        model.train(training)


def _check_required_args(model: nn.Module, dummy_input: Any) -> None:
    """Name the forward arguments without a default that ``dummy_input`` does not supply."""
    args, kwargs = as_model_args(dummy_input)
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return
    if any(p.kind == p.VAR_POSITIONAL for p in params) and args:
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    supplied = {p.name for p in positional[: len(args)]} | set(kwargs)
    missing = [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.default is inspect.Parameter.empty
        and p.name not in supplied
    ]
    if missing:
        given = f"{len(args)} positional input(s)" + (f" and keyword(s) {sorted(kwargs)}" if kwargs else "")
        raise InvalidInputError(
            f"{type(model).__name__}.forward needs argument(s) {missing} that dummy_input does not supply "
            f"(it gives {given}). Fix: pass them in dummy_input, e.g. as a dict "
            f"{{{', '.join(repr(m) + ': ...' for m in missing)}}} merged with the other inputs."
        )


def _concrete_args(model: nn.Module, dummy_input: Any) -> dict[str, Any]:
    """Parameters the dummy input does not supply are fixed to their defaults while tracing."""
    args, kwargs = as_model_args(dummy_input)
    try:
        sig = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return {}
    params = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    concrete: dict[str, Any] = {}
    for i, p in enumerate(params):
        supplied = i < len(args) if p.kind != p.KEYWORD_ONLY else False
        if supplied or p.name in kwargs:
            continue
        if p.default is not inspect.Parameter.empty:
            concrete[p.name] = p.default
    return concrete


def _leaf_spec(leaf_modules: Iterable[type[nn.Module] | str]) -> tuple[tuple[type[nn.Module], ...], frozenset[str]]:
    types: list[type[nn.Module]] = []
    names: set[str] = set()
    for leaf in leaf_modules:
        if isinstance(leaf, str):
            names.add(leaf)
        elif isinstance(leaf, type) and issubclass(leaf, nn.Module):
            types.append(leaf)
        else:
            raise InvalidInputError(f"leaf_modules entries must be nn.Module classes or module names. Got {leaf!r} instead.")
    return tuple(types), frozenset(names)


def _trace(model: nn.Module, dummy_input: Any, leaf_modules: Sequence[type[nn.Module] | str]) -> fx.GraphModule:
    types, names = _leaf_spec(leaf_modules)
    tracer = _Tracer(types, names)
    concrete = _concrete_args(model, dummy_input)
    try:
        graph = tracer.trace(model, concrete_args=concrete or None)
    except Exception as err:
        stack = list(getattr(tracer, "module_stack", {}).keys())
        where = stack[-1] if stack else "<model>"
        where = where or "<model>"
        raise ModelPreparationError(
            f"torch.fx could not trace the model inside module {where!r}: {type(err).__name__}: {err}. "
            f"Fix: remove data-dependent Python control flow from {where!r}'s forward, or pass "
            f"leaf_modules=[{where!r}] so it is kept whole (then only its output is quantized)."
        ) from err
    name = type(model).__name__
    return fx.GraphModule(tracer.root, graph, name)


def propagate_shapes(gm: fx.GraphModule, dummy_input: Any) -> None:
    """Record each node's output tensor metadata (``node.meta['tensor_meta']``)."""
    args, kwargs = as_model_args(dummy_input)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    flat = list(args)
    for ph in placeholders[len(args) :]:
        if ph.target in kwargs:
            flat.append(kwargs[ph.target])
        elif ph.args:
            flat.append(ph.args[0])
        else:
            flat.append(None)
    training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*flat)
    finally:
        gm.train(training)


def _is_tensor_node(a: Any) -> bool:
    return isinstance(a, fx.Node) and hasattr(a.meta.get("tensor_meta"), "dtype")


def _scope(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    last = list(stack.values())[-1]
    path = last[0] if isinstance(last, tuple) else str(last)
    return str(path)


def _unique_name(gm: fx.GraphModule, base: str, taken: set[str]) -> str:
    existing = {name for name, _ in gm.named_modules()} | taken
    if base not in existing:
        taken.add(base)
        return base
    i = 1
    while f"{base}_{i}" in existing:
        i += 1
    taken.add(f"{base}_{i}")
    return f"{base}_{i}"


def _get_attr_value(gm: fx.GraphModule, node: Any) -> Any:
    if isinstance(node, fx.Node) and node.op == "get_attr":
        obj: Any = gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        return obj
    return None


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _weighted_module(gm: fx.GraphModule, node: fx.Node) -> tuple[nn.Module, list[Any], str, list[Any]] | None:
    """Functional conv/linear/layer_norm/embedding with get_attr parameters -> the torch.nn module."""
    t = node.target
    if t in (F.conv1d, F.conv2d, F.conv3d):
        w = _get_attr_value(gm, _arg(node, 1, "weight", None))
        b_node = _arg(node, 2, "bias", None)
        b = _get_attr_value(gm, b_node)
        if not isinstance(w, nn.Parameter) or (b_node is not None and not isinstance(b, nn.Parameter)):
            return None
        cls: type[nn.Conv1d | nn.Conv2d | nn.Conv3d] = (
            nn.Conv1d if t is F.conv1d else nn.Conv2d if t is F.conv2d else nn.Conv3d
        )
        stride = _arg(node, 3, "stride", 1)
        padding = _arg(node, 4, "padding", 0)
        dilation = _arg(node, 5, "dilation", 1)
        groups = _arg(node, 6, "groups", 1)
        if any(isinstance(v, fx.Node) for v in (stride, padding, dilation, groups)):
            return None
        out_ch, in_per_group = w.shape[0], w.shape[1]
        conv = cls(
            in_per_group * groups,
            out_ch,
            tuple(w.shape[2:]),  # type: ignore[arg-type]
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=b is not None,
            device="meta",
        )
        conv.weight = w
        if b is not None:
            conv.bias = b
        return conv, [node.args[0]], "conv", [_arg(node, 1, "weight", None), b_node]
    if t is F.linear:
        w = _get_attr_value(gm, _arg(node, 1, "weight", None))
        b_node = _arg(node, 2, "bias", None)
        b = _get_attr_value(gm, b_node)
        if not isinstance(w, nn.Parameter) or (b_node is not None and not isinstance(b, nn.Parameter)):
            return None
        lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
        lin.weight = w
        if b is not None:
            lin.bias = b
        return lin, [node.args[0]], "linear", [_arg(node, 1, "weight", None), b_node]
    if t is F.layer_norm:
        shape = _arg(node, 1, "normalized_shape", None)
        w_node, b_node = _arg(node, 2, "weight", None), _arg(node, 3, "bias", None)
        w, b = _get_attr_value(gm, w_node), _get_attr_value(gm, b_node)
        eps = _arg(node, 4, "eps", 1e-5)
        if isinstance(shape, fx.Node) or (w_node is not None and not isinstance(w, nn.Parameter)):
            return None
        if b_node is not None and not isinstance(b, nn.Parameter):
            return None
        ln = nn.LayerNorm(shape, eps=eps, elementwise_affine=w is not None, bias=b is not None, device="meta")
        if w is not None:
            ln.weight = w
        if b is not None:
            ln.bias = b
        return ln, [node.args[0]], "layer_norm", [w_node, b_node]
    if t is F.embedding:
        w = _get_attr_value(gm, _arg(node, 1, "weight", None))
        if not isinstance(w, nn.Parameter):
            return None
        padding_idx = _arg(node, 2, "padding_idx", None)
        emb = nn.Embedding(w.shape[0], w.shape[1], padding_idx=padding_idx, device="meta")
        emb.weight = w
        return emb, [node.args[0]], "embedding", [_arg(node, 1, "weight", None), None]
    return None


def _functional_module(node: fx.Node) -> tuple[nn.Module, list[Any], str] | None:
    """A module standing for a functional op, with the node arguments it is called with."""
    t = node.target
    args = list(node.args)
    if node.op == "call_function":
        if t in _BINARY:
            if t in (torch.add, torch.sub) and node.kwargs.get("alpha", 1) != 1:
                return None
            if t is torch.div and node.kwargs.get("rounding_mode") is not None:
                return None
            if len(args) != 2 or not any(_is_tensor_node(a) for a in args):
                return None
            cls = _BINARY[t]
            return cls(), args, cls.__name__.lower()
        if t in (torch.cat, torch.concat, torch.concatenate):
            tensors = args[0] if args else node.kwargs.get("tensors")
            dim = args[1] if len(args) > 1 else node.kwargs.get("dim", node.kwargs.get("axis", 0))
            if not isinstance(tensors, (list, tuple)) or not all(_is_tensor_node(a) for a in tensors) or isinstance(dim, fx.Node):
                return None
            return _ops.Concat(int(dim)), list(tensors), "cat"  # type: ignore[arg-type]
        if t in _UNARY and args and _is_tensor_node(args[0]):
            if (t is F.elu or t is F.softplus) and (len(args) > 1 or node.kwargs):
                return None
            cls = _UNARY[t]
            return cls(), [args[0]], cls.__name__.lower()
        if t is F.hardtanh and args and _is_tensor_node(args[0]):
            lo, hi = _arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0)
            if (lo, hi) == (0.0, 6.0):
                return nn.ReLU6(), [args[0]], "relu6"
            return nn.Hardtanh(lo, hi), [args[0]], "hardtanh"
        if t is F.leaky_relu and args and _is_tensor_node(args[0]):
            return nn.LeakyReLU(_arg(node, 1, "negative_slope", 0.01)), [args[0]], "leaky_relu"
        if t is F.gelu and args and _is_tensor_node(args[0]):
            return nn.GELU(approximate=str(node.kwargs.get("approximate", "none"))), [args[0]], "gelu"
        if t in (F.softmax, torch.softmax) and args and _is_tensor_node(args[0]):
            dim = _arg(node, 1, "dim", None)
            if dim is None or isinstance(dim, fx.Node):
                return None
            return nn.Softmax(dim), [args[0]], "softmax"
        if t is F.log_softmax and args and _is_tensor_node(args[0]):
            dim = _arg(node, 1, "dim", None)
            if dim is None:
                return None
            return nn.LogSoftmax(dim), [args[0]], "log_softmax"
        if t is F.adaptive_avg_pool2d and args and _is_tensor_node(args[0]):
            return nn.AdaptiveAvgPool2d(_arg(node, 1, "output_size", 1)), [args[0]], "adaptive_avg_pool2d"
        if t is F.adaptive_avg_pool1d and args and _is_tensor_node(args[0]):
            return nn.AdaptiveAvgPool1d(_arg(node, 1, "output_size", 1)), [args[0]], "adaptive_avg_pool1d"
        if t is F.avg_pool2d and args and _is_tensor_node(args[0]):
            k = _arg(node, 1, "kernel_size", None)
            return (
                nn.AvgPool2d(
                    k,
                    _arg(node, 2, "stride", None),
                    _arg(node, 3, "padding", 0),
                    _arg(node, 4, "ceil_mode", False),
                    _arg(node, 5, "count_include_pad", True),
                    _arg(node, 6, "divisor_override", None),
                ),
                [args[0]],
                "avg_pool2d",
            )
        if t is F.max_pool2d and args and _is_tensor_node(args[0]):
            return (
                nn.MaxPool2d(
                    _arg(node, 1, "kernel_size", None),
                    _arg(node, 2, "stride", None),
                    _arg(node, 3, "padding", 0),
                    _arg(node, 4, "dilation", 1),
                    _arg(node, 5, "ceil_mode", False),
                ),
                [args[0]],
                "max_pool2d",
            )
        if t is torch.mean and args and _is_tensor_node(args[0]):
            return _ops.Mean(_arg(node, 1, "dim", None), _arg(node, 2, "keepdim", False)), [args[0]], "mean"
        if t is F.pad and args and _is_tensor_node(args[0]):
            return (
                _ops.Pad(_arg(node, 1, "pad", ()), _arg(node, 2, "mode", "constant"), _arg(node, 3, "value", None)),
                [args[0]],
                "pad",
            )
        name = getattr(t, "__name__", "")
        if name in _ops.functional_names() and getattr(_ops, "_FUNCTIONS", {}).get(name) is t:
            tensor_args = [a for a in args if isinstance(a, fx.Node)]
            if not tensor_args or not all(_is_tensor_node(a) for a in tensor_args):
                return None
            if len(tensor_args) != len(args) and not all(isinstance(a, fx.Node) for a in args[: len(tensor_args)]):
                return None
            if any(isinstance(v, fx.Node) for v in node.kwargs.values()):
                return None
            const = args[len(tensor_args) :]
            if const:
                return None
            return _ops.FunctionalOp(name, dict(node.kwargs)), tensor_args, name
        return None
    if node.op == "call_method" and args and _is_tensor_node(args[0]):
        m = str(t)
        if m in _BINARY_METHODS and len(args) == 2 and not node.kwargs:
            cls = _BINARY_METHODS[m]
            return cls(), args, cls.__name__.lower()
        if m in _UNARY_METHODS and len(args) == 1:
            cls = _UNARY_METHODS[m]
            return cls(), [args[0]], cls.__name__.lower()
        if m == "softmax":
            dim = _arg(node, 1, "dim", None)
            if dim is None or isinstance(dim, fx.Node):
                return None
            return nn.Softmax(dim), [args[0]], "softmax"
        if m == "mean":
            dim = _arg(node, 1, "dim", None)
            if isinstance(dim, fx.Node):
                return None
            return _ops.Mean(dim, _arg(node, 2, "keepdim", False)), [args[0]], "mean"
        if m in ("exp", "sqrt", "rsqrt", "pow", "abs", "neg", "sum", "erf", "clamp", "reciprocal", "square"):
            tensor_args = [a for a in args if isinstance(a, fx.Node)]
            if len(tensor_args) != len(args) or any(isinstance(v, fx.Node) for v in node.kwargs.values()):
                if m == "pow" and len(args) == 2 and isinstance(args[1], (int, float)):
                    return _ops.FunctionalOp("pow", {"exponent": args[1]}), [args[0]], "pow"
                if m in ("sum", "clamp") and not any(isinstance(a, fx.Node) for a in args[1:]):
                    kw = dict(node.kwargs)
                    if m == "sum" and len(args) > 1:
                        kw["dim"] = args[1]
                    if m == "clamp":
                        if len(args) > 1:
                            kw["min"] = args[1]
                        if len(args) > 2:
                            kw["max"] = args[2]
                    return _ops.FunctionalOp(m, kw), [args[0]], m
                return None
            return _ops.FunctionalOp(m, dict(node.kwargs)), tensor_args, m
    return None


def _is_data_movement(node: fx.Node) -> bool:
    if node.op == "call_function":
        return (
            node.target in _DATA_MOVEMENT_FUNCTIONS
            or is_data_movement_target(node.target)
            or getattr(node.target, "__name__", "") == "_assert_is_none"
        )
    if node.op == "call_method":
        return str(node.target) in _DATA_MOVEMENT_METHODS
    return False


def _install_module(gm: fx.GraphModule, path: str, module: nn.Module) -> None:
    """Put ``module`` at ``path`` (creating missing parents), keeping the children of what was there."""
    install_module(gm, path, module)


def _owner_path(gm: fx.GraphModule, param_nodes: list[Any], taken: set[str]) -> str | None:
    """The path of the custom layer whose own forward made this functional call, if it is one.

    That is the case when the weight is ``<path>.weight`` (and the bias ``<path>.bias``) and the
    module at ``<path>`` holds no other parameters: then the converted module takes its place.
    """
    weight, bias = param_nodes
    if not isinstance(weight, fx.Node) or not str(weight.target).endswith(".weight"):
        return None
    path = str(weight.target)[: -len(".weight")]
    if bias is not None and str(getattr(bias, "target", "")) != f"{path}.bias":
        return None
    owner = _get_attr_value_path(gm, path)
    if type(owner) is not nn.Module or path in taken:
        return None
    if {n for n, _ in owner.named_parameters(recurse=False)} - {"weight", "bias"}:
        return None
    return path


def _convert_functionals(gm: fx.GraphModule, state: _State) -> None:
    taken: set[str] = set()
    attrs_before = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    for node in list(gm.graph.nodes):
        if node.op not in ("call_function", "call_method"):
            continue
        weighted = _weighted_module(gm, node) if node.op == "call_function" else None
        path: str | None = None
        if weighted is not None:
            module, call_args, base, param_nodes = weighted
            path = _owner_path(gm, param_nodes, taken)
            if path is None:
                first = param_nodes[0]
                scope = str(first.target).rpartition(".")[0] if isinstance(first, fx.Node) else _scope(node)
                path = _unique_name(gm, f"{scope}.{base}" if scope else base, taken)
            taken.add(path)
        else:
            found = _functional_module(node)
            if found is None:
                _note_unconverted(node, state)
                continue
            module, call_args, base = found
            scope = _scope(node)
            path = _unique_name(gm, f"{scope}.{base}" if scope else base, taken)
        module = _materialize(module)
        _install_module(gm, path, module)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(path, tuple(call_args))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        what = getattr(node.target, "__name__", str(node.target))
        state.changes.append(f"{what} -> {type(module).__name__} module {path!r}")
    gm.graph.eliminate_dead_code()
    attrs_after = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    for target in attrs_before - attrs_after:
        parent_path, _, attr = target.rpartition(".")
        parent = _get_attr_value_path(gm, parent_path) if parent_path else gm
        if type(parent) is nn.Module and attr in parent._parameters:
            del parent._parameters[attr]
        elif type(parent) is nn.Module and attr in parent._buffers:
            del parent._buffers[attr]
    gm.recompile()


def _note_unconverted(node: fx.Node, state: _State) -> None:
    if _is_data_movement(node):
        return
    tm = node.meta.get("tensor_meta")
    if tm is None or not hasattr(tm, "dtype") or not tm.dtype.is_floating_point:
        return
    state.problems.append(
        Problem(
            "warning",
            f"{_scope(node) or '<model>'} ({node.name})",
            f"functional op {getattr(node.target, '__name__', node.target)!r} has no quantizable module; "
            "its output stays in float.",
            "use an nn.Module for it, or ignore this if the op does not matter for the target hardware",
        )
    )


def _materialize(module: nn.Module) -> nn.Module:
    """Modules built on the meta device get real (empty) storage only for what was not shared."""
    for name, p in list(module.named_parameters(recurse=False)):
        if p.is_meta:
            setattr(module, name, nn.Parameter(torch.empty_like(p, device="cpu")))
    for name, b in list(module.named_buffers(recurse=False)):
        if b is not None and b.is_meta:
            module.register_buffer(name, torch.empty_like(b, device="cpu"))
    return module


def _get_attr_value_path(gm: fx.GraphModule, path: str) -> Any:
    obj: Any = gm
    for part in path.split("."):
        if not hasattr(obj, part):
            return None
        obj = getattr(obj, part)
    return obj


def _dedupe_stateless_modules(gm: fx.GraphModule, state: _State) -> None:
    calls = Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_module")
    seen: Counter[str] = Counter()
    taken: set[str] = set()
    for node in gm.graph.nodes:
        if node.op != "call_module" or calls[str(node.target)] < 2:
            continue
        target = str(node.target)
        seen[target] += 1
        if seen[target] == 1:
            continue
        module = gm.get_submodule(target)
        if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
            if seen[target] == 2:
                state.problems.append(
                    Problem(
                        "warning",
                        target,
                        f"module is called {calls[target]} times and has weights: the calls share one weight "
                        "quantizer (each output still gets its own activation quantizer).",
                        "use a separate module per call if the calls need separate weight encodings",
                    )
                )
            continue
        path = _unique_name(gm, f"{target}_{seen[target] - 1}", taken)
        gm.add_submodule(path, copy.deepcopy(module))
        node.target = path
        state.changes.append(f"module {target!r} is called {calls[target]} times: call {seen[target]} uses a copy {path!r}")
    gm.recompile()


def _survey(gm: fx.GraphModule, state: _State) -> tuple[int, int]:
    weight_layers = 0
    quantizable = 0
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        if str(node.target) == "_guards_fn":  # torch.export's input-shape guards
            continue
        module = gm.get_submodule(str(node.target))
        if isinstance(module, WEIGHT_LAYERS):
            weight_layers += 1
        if isinstance(module, PASSTHROUGH_LAYERS):
            continue
        quantizable += 1
        if not isinstance(module, _KNOWN_LEAVES):
            has_weights = any(True for _ in module.parameters())
            state.problems.append(
                Problem(
                    "warning",
                    str(node.target),
                    f"{type(module).__name__} is not a layer aq-search quantizes inside"
                    + ("; its weights stay in float" if has_weights else "")
                    + " (its output is quantized when it is a float tensor).",
                    "replace it with standard layers (nn.Linear, nn.Conv2d, ...) or a traceable implementation",
                )
            )
    return weight_layers, quantizable


def _outputs_close(a: Any, b: Any) -> tuple[bool, float]:
    la, lb = pytree.tree_leaves(a), pytree.tree_leaves(b)
    if len(la) != len(lb):
        return False, float("inf")
    worst = 0.0
    for x, y in zip(la, lb, strict=True):
        if isinstance(x, Tensor) and isinstance(y, Tensor):
            if x.shape != y.shape:
                return False, float("inf")
            if x.is_floating_point():
                diff = float((x - y).abs().max()) if x.numel() else 0.0
                worst = max(worst, diff)
                if not torch.allclose(x, y, rtol=1e-4, atol=1e-5, equal_nan=True):
                    return False, worst
            elif not torch.equal(x, y):
                return False, float("inf")
    return True, worst


def _finish(gm: fx.GraphModule, dummy_input: Any, reference: Any, state: _State) -> None:
    """Shapes, functional ops -> modules, and the check that the graph computes the model's function."""
    gm.eval()
    propagate_shapes(gm, dummy_input)
    _convert_functionals(gm, state)
    _dedupe_stateless_modules(gm, state)
    propagate_shapes(gm, dummy_input)
    same, diff = _outputs_close(reference, _run(gm, dummy_input))
    if not same:
        raise ModelPreparationError(
            f"The captured model computes a different function than the original (max abs difference {diff:.3g}). "
            "The model probably has control flow the capture cannot follow (for example on tensor values or "
            "on self.training). Fix: pass leaf_modules=[...] naming the module with that control flow."
        )


def _without_cache(model: nn.Module) -> nn.Module:
    """A copy in eval mode; Hugging Face models get ``config.use_cache = False`` (no KV-cache outputs)."""
    work = copy.deepcopy(model).eval()
    config = getattr(work, "config", None)
    if config is not None and getattr(config, "use_cache", False):
        config.use_cache = False
    return work


def _short(err: BaseException, limit: int = 600) -> str:
    text = f"{type(err).__name__}: {err}".strip()
    text = text.split("\n\nFor more information", 1)[0]
    return text if len(text) <= limit else text[:limit] + " ..."


def _capture(
    module: nn.Module, dummy_input: Any, leaf_modules: Sequence[type[nn.Module] | str], reference: Any
) -> tuple[fx.GraphModule, _State]:
    """torch.export first, torch.fx symbolic tracing when export (or the graph it gives) fails."""
    types, names = _leaf_spec(leaf_modules)

    def is_leaf(m: nn.Module, path: str) -> bool:
        if path in names or (bool(types) and isinstance(m, types)) or isinstance(m, _KNOWN_LEAVES):
            return True
        if is_conv1d_gemm(m):
            return True
        home = type(m).__module__
        return home.startswith(("torch.nn", "torch.ao.nn", "aq_search.")) and not isinstance(m, nn.Sequential)

    try:
        captured = capture_with_export(_without_cache(module), dummy_input, is_leaf)
        state = _State(front_end="torch.export")
        _finish(captured.graph_module, dummy_input, reference, state)
        state.problems.append(Problem("info", "<model>", "captured with torch.export"))
        return captured.graph_module, state
    except Exception as err:  # noqa: BLE001 - any export failure falls back to fx and is reported
        export_error = _short(err)
        logger.debug("torch.export could not capture the model, trying torch.fx: %s", export_error)
    state = _State(front_end="torch.fx")
    try:
        gm = _trace(_without_cache(module), dummy_input, leaf_modules)
        _finish(gm, dummy_input, reference, state)
    except ModelPreparationError as err:
        raise ModelPreparationError(
            f"Neither capture front end could capture the model. torch.export failed with {export_error} "
            f"torch.fx failed with: {err}"
        ) from err
    state.problems.append(
        Problem("info", "<model>", f"captured with torch.fx symbolic tracing; torch.export failed with {export_error}")
    )
    return gm, state


def _prepare(
    model: object, dummy_input: Any, leaf_modules: Sequence[type[nn.Module] | str]
) -> tuple[fx.GraphModule, PreparationReport]:
    module = _check_model(model)
    # Hugging Face models: the prepared model runs with use_cache=False, so is the reference
    uses_cache = bool(getattr(getattr(module, "config", None), "use_cache", False))
    reference = check_dummy_input(_without_cache(module) if uses_cache else module, dummy_input)
    if is_prepared(module):
        assert isinstance(module, fx.GraphModule)
        gm = copy.deepcopy(module)
        report = gm.meta[_META_KEY]["report"]
        return gm, report
    gm, state = _capture(module, dummy_input, leaf_modules, reference)
    weight_layers, quantizable = _survey(gm, state)
    input_names = tuple(str(n.target) for n in gm.graph.nodes if n.op == "placeholder")
    if weight_layers == 0 and quantizable == 0:
        state.problems.append(
            Problem(
                "error",
                "<model>",
                "the model has nothing to quantize: no Conv/Linear/Embedding layers and no value-changing ops.",
                "pass the model that does the work (not a wrapper whose forward hides it from tracing)",
            )
        )
    report = PreparationReport(
        tuple(state.changes), tuple(state.problems), input_names, weight_layers, quantizable, state.front_end
    )
    gm.meta[_META_KEY] = {"report": report}
    return gm, report


def prepare_model(model: nn.Module, dummy_input: Any, *, leaf_modules: Sequence[type[nn.Module] | str] = ()) -> fx.GraphModule:
    """Trace ``model`` and turn its functional ops into modules; the original model is not modified.

    Args:
        model: the FP32 model.
        dummy_input: one batch (a tensor, a tuple of inputs, or a dict of keyword inputs).
        leaf_modules: module classes or names to keep whole (not traced into), e.g. modules with
            data-dependent control flow.

    Returns:
        A ``torch.fx.GraphModule`` computing the same function, in eval mode; what was changed is in
        ``prepared.meta["aq_search"]["report"]`` (a :class:`PreparationReport`).

    Raises:
        InvalidInputError: ``model`` is not an ``nn.Module`` or rejects ``dummy_input``.
        ModelPreparationError: the model cannot be traced or has nothing to quantize.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
        >>> prepared = prepare_model(net, torch.randn(1, 3, 8, 8))
        >>> [name for name, _ in prepared.named_children()]
        ['0', '1']
    """
    gm, report = _prepare(model, dummy_input, leaf_modules)
    if report.errors:
        raise ModelPreparationError("; ".join(str(p) for p in report.errors))
    for change in report.changes:
        logger.debug("prepare_model: %s", change)
    return gm


def validate_model(
    model: nn.Module, dummy_input: Any, *, leaf_modules: Sequence[type[nn.Module] | str] = ()
) -> PreparationReport:
    """Report what blocks or degrades quantization of ``model``, naming the module and the fix.

    Unlike :func:`prepare_model` it does not raise for problems of the model (untraceable control
    flow, unsupported layers, nothing to quantize): they are findings in the returned report. It
    still raises :class:`InvalidInputError` when ``model`` is not an ``nn.Module``.
    """
    _check_model(model)
    try:
        _, report = _prepare(model, dummy_input, leaf_modules)
    except (ModelPreparationError, InvalidInputError) as err:
        if isinstance(err, InvalidInputError) and not isinstance(model, nn.Module):
            raise
        return PreparationReport(problems=(Problem("error", "<model>", str(err)),))
    return report
