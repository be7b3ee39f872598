"""Functional ops of a traced graph and the ``torch.nn`` modules that stand for them.

:func:`weighted_module` turns functional conv / linear / layer_norm / embedding calls on
``get_attr`` parameters into their modules; :func:`functional_module` does the same for
parameter-free ops; :func:`is_data_movement` names the ops that only move values.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from . import _ops
from ._capture import is_data_movement_target

__all__ = ["attr_at", "functional_module", "is_data_movement", "is_tensor_node", "node_scope", "weighted_module"]


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


def is_tensor_node(a: Any) -> bool:
    return isinstance(a, fx.Node) and hasattr(a.meta.get("tensor_meta"), "dtype")


def node_scope(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    last = list(stack.values())[-1]
    path = last[0] if isinstance(last, tuple) else str(last)
    return str(path)


def attr_at(gm: fx.GraphModule, path: str) -> Any:
    """The object at dotted ``path`` below ``gm``; None when a part is missing."""
    obj: Any = gm
    for part in path.split("."):
        if not hasattr(obj, part):
            return None
        obj = getattr(obj, part)
    return obj


def _get_attr_value(gm: fx.GraphModule, node: Any) -> Any:
    if isinstance(node, fx.Node) and node.op == "get_attr":
        return attr_at(gm, str(node.target))
    return None


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def weighted_module(gm: fx.GraphModule, node: fx.Node) -> tuple[nn.Module, list[Any], str, list[Any]] | None:
    """Functional conv/linear/layer_norm/embedding with get_attr parameters -> the torch.nn module."""
    t = node.target
    if t in (F.conv1d, F.conv2d, F.conv3d):
        w = _get_attr_value(gm, _arg(node, 1, "weight", None))
        b_node = _arg(node, 2, "bias", None)
        b = _get_attr_value(gm, b_node)
        if not isinstance(w, nn.Parameter) or (b_node is not None and not isinstance(b, nn.Parameter)):
            return None
        cls: type[nn.Conv1d | nn.Conv2d | nn.Conv3d] = nn.Conv1d if t is F.conv1d else nn.Conv2d if t is F.conv2d else nn.Conv3d
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


def functional_module(node: fx.Node) -> tuple[nn.Module, list[Any], str] | None:
    """A module standing for a functional op, with the node arguments it is called with."""
    t = node.target
    args = list(node.args)
    if node.op == "call_function":
        if t in _BINARY:
            if t in (torch.add, torch.sub) and node.kwargs.get("alpha", 1) != 1:
                return None
            if t is torch.div and node.kwargs.get("rounding_mode") is not None:
                return None
            if len(args) != 2 or not any(is_tensor_node(a) for a in args):
                return None
            cls = _BINARY[t]
            return cls(), args, cls.__name__.lower()
        if t in (torch.cat, torch.concat, torch.concatenate):
            tensors = args[0] if args else node.kwargs.get("tensors")
            dim = args[1] if len(args) > 1 else node.kwargs.get("dim", node.kwargs.get("axis", 0))
            if not isinstance(tensors, (list, tuple)) or not all(is_tensor_node(a) for a in tensors) or isinstance(dim, fx.Node):
                return None
            return _ops.Concat(int(dim)), list(tensors), "cat"  # type: ignore[arg-type]
        if t in _UNARY and args and is_tensor_node(args[0]):
            if (t is F.elu or t is F.softplus) and (len(args) > 1 or node.kwargs):
                return None
            cls = _UNARY[t]
            return cls(), [args[0]], cls.__name__.lower()
        if t is F.hardtanh and args and is_tensor_node(args[0]):
            lo, hi = _arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0)
            if (lo, hi) == (0.0, 6.0):
                return nn.ReLU6(), [args[0]], "relu6"
            return nn.Hardtanh(lo, hi), [args[0]], "hardtanh"
        if t is F.leaky_relu and args and is_tensor_node(args[0]):
            return nn.LeakyReLU(_arg(node, 1, "negative_slope", 0.01)), [args[0]], "leaky_relu"
        if t is F.gelu and args and is_tensor_node(args[0]):
            return nn.GELU(approximate=str(node.kwargs.get("approximate", "none"))), [args[0]], "gelu"
        if t in (F.softmax, torch.softmax) and args and is_tensor_node(args[0]):
            dim = _arg(node, 1, "dim", None)
            if dim is None or isinstance(dim, fx.Node):
                return None
            return nn.Softmax(dim), [args[0]], "softmax"
        if t is F.log_softmax and args and is_tensor_node(args[0]):
            dim = _arg(node, 1, "dim", None)
            if dim is None:
                return None
            return nn.LogSoftmax(dim), [args[0]], "log_softmax"
        if t is F.adaptive_avg_pool2d and args and is_tensor_node(args[0]):
            return nn.AdaptiveAvgPool2d(_arg(node, 1, "output_size", 1)), [args[0]], "adaptive_avg_pool2d"
        if t is F.adaptive_avg_pool1d and args and is_tensor_node(args[0]):
            return nn.AdaptiveAvgPool1d(_arg(node, 1, "output_size", 1)), [args[0]], "adaptive_avg_pool1d"
        if t is F.avg_pool2d and args and is_tensor_node(args[0]):
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
        if t is F.max_pool2d and args and is_tensor_node(args[0]):
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
        if t is torch.mean and args and is_tensor_node(args[0]):
            return _ops.Mean(_arg(node, 1, "dim", None), _arg(node, 2, "keepdim", False)), [args[0]], "mean"
        if t is F.pad and args and is_tensor_node(args[0]):
            return (
                _ops.Pad(_arg(node, 1, "pad", ()), _arg(node, 2, "mode", "constant"), _arg(node, 3, "value", None)),
                [args[0]],
                "pad",
            )
        name = getattr(t, "__name__", "")
        if name in _ops.functional_names() and getattr(_ops, "_FUNCTIONS", {}).get(name) is t:
            tensor_args = [a for a in args if isinstance(a, fx.Node)]
            if not tensor_args or not all(is_tensor_node(a) for a in tensor_args):
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
    if node.op == "call_method" and args and is_tensor_node(args[0]):
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


def is_data_movement(node: fx.Node) -> bool:
    if node.op == "call_function":
        return (
            node.target in _DATA_MOVEMENT_FUNCTIONS
            or is_data_movement_target(node.target)
            or getattr(node.target, "__name__", "") == "_assert_is_none"
        )
    if node.op == "call_method":
        return str(node.target) in _DATA_MOVEMENT_METHODS
    return False
