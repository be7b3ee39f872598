"""Graph capture front ends: ``torch.export`` first, ``torch.fx`` symbolic tracing as the fallback.

``torch.export`` (the PT2 capture PyTorch's own quantization flow uses) handles what symbolic tracing
cannot: Hugging Face models that assign into tensors, build masks with data-dependent Python, take
keyword inputs and return ``ModelOutput`` objects. Its graph is made of ATen ops; this module turns it
into the same shape of graph the fx tracer gives, so the rest of preparation does not care which
front end ran:

* every standard layer (``nn.Linear``, ``nn.Conv2d``, ``nn.LayerNorm``, ``nn.ReLU`` ... and the user's
  ``leaf_modules``) that export inlined is rolled back into one ``call_module`` of that module, at its
  original path, so quantizer names are the module names QuantSim, AMP, AdaRound and encodings use;
* the remaining ATen ops are rewritten to the torch functions they stand for (``aten.add`` ->
  ``operator.add``, ``aten.linear`` -> ``F.linear`` ...), which ``_prepare`` turns into modules;
* ``scaled_dot_product_attention`` is written out as ``matmul -> scale -> mask -> softmax -> matmul`` so
  that each attention matmul and the softmax get their own quantizer (see docs/transformers.md).

The graph keeps export's pytree calling convention: the prepared model takes the same positional and
keyword arguments as the original and returns the same structure (``ModelOutput``, dict, tuple).
"""

from __future__ import annotations

import inspect
import logging
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from .._data import as_model_args

__all__ = [
    "ExportCapture",
    "attention_fill",
    "capture_with_export",
    "causal_fill",
    "install_module",
    "is_conv1d_gemm",
    "repeat_kv_like",
]

logger = logging.getLogger(__name__)

aten = torch.ops.aten


def attention_fill(scores: Tensor, mask: Tensor) -> Tensor:
    """Boolean attention mask: keep ``scores`` where ``mask`` is True, the dtype's minimum elsewhere."""
    return scores.masked_fill(mask.logical_not(), torch.finfo(scores.dtype).min)


def causal_fill(scores: Tensor) -> Tensor:
    """Causal mask on the last two dimensions (query i sees keys <= i)."""
    q, k = scores.shape[-2], scores.shape[-1]
    keep = torch.ones(q, k, dtype=torch.bool, device=scores.device).tril(diagonal=k - q)
    return scores.masked_fill(keep.logical_not(), torch.finfo(scores.dtype).min)


def repeat_kv_like(kv: Tensor, query: Tensor) -> Tensor:
    """Grouped-query attention: repeat key/value heads to the query's head count."""
    return kv.repeat_interleave(query.shape[-3] // kv.shape[-3], dim=-3)


#: Functions the sdpa rewrite inserts; they only move or mask values (no quantizer).
DATA_MOVEMENT_HELPERS = frozenset({attention_fill, causal_fill, repeat_kv_like})

#: ATen ops that move, select or mask values, or compute shapes and index tensors: no quantizer.
ATEN_DATA_MOVEMENT = frozenset(
    {
        aten.view.default,
        aten.reshape.default,
        aten._unsafe_view.default,
        aten.permute.default,
        aten.transpose.int,
        aten.t.default,
        aten.unsqueeze.default,
        aten.squeeze.default,
        aten.squeeze.dim,
        aten.squeeze.dims,
        aten.expand.default,
        aten.expand_as.default,
        aten.contiguous.default,
        aten.clone.default,
        aten.slice.Tensor,
        aten.select.int,
        aten.alias.default,
        aten._to_copy.default,
        aten.to.dtype,
        aten.to.dtype_layout,
        aten.to.device,
        aten.to.other,
        aten.type_as.default,
        aten.flatten.using_ints,
        aten.unflatten.int,
        aten.split.Tensor,
        aten.split_with_sizes.default,
        aten.chunk.default,
        aten.unbind.int,
        aten.dropout.default,
        aten.detach.default,
        aten.index.Tensor,
        aten.index_select.default,
        aten.gather.default,
        aten.repeat.default,
        aten.repeat_interleave.self_int,
        aten.masked_fill.Scalar,
        aten.masked_fill.Tensor,
        aten.sym_size.int,
        aten._assert_tensor_metadata.default,
        aten.lift_fresh_copy.default,
        aten.stack.default,
        aten.narrow.default,
        aten.max_pool2d.default,
        aten.pad.default,
        aten.constant_pad_nd.default,
    }
)


def _first(args: tuple[Any, ...]) -> tuple[Any, ...]:
    return args[:1]


def _softmax(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    return F.softmax, (args[0], args[1]), {}


#: ATen op -> (torch function, argument mapper). The mapper turns ATen arguments into the function's.
_ATEN_TO_TORCH: dict[Any, Callable[[tuple[Any, ...], dict[str, Any]], tuple[Any, tuple[Any, ...], dict[str, Any]]]] = {
    aten.linear.default: lambda a, k: (F.linear, a, {}),
    aten.conv1d.default: lambda a, k: (F.conv1d, a, {}),
    aten.conv2d.default: lambda a, k: (F.conv2d, a, {}),
    aten.conv3d.default: lambda a, k: (F.conv3d, a, {}),
    aten.layer_norm.default: lambda a, k: (F.layer_norm, a[:5], {}),
    aten.embedding.default: lambda a, k: (F.embedding, (a[1], a[0]), {}),
    aten.matmul.default: lambda a, k: (torch.matmul, a, {}),
    aten.bmm.default: lambda a, k: (torch.matmul, a, {}),
    aten.mm.default: lambda a, k: (torch.matmul, a, {}),
    aten.softmax.int: _softmax,
    aten._softmax.default: _softmax,
    aten.log_softmax.int: lambda a, k: (F.log_softmax, (a[0],), {"dim": a[1]}),
    aten.gelu.default: lambda a, k: (F.gelu, a, dict(k)),
    aten.relu.default: lambda a, k: (F.relu, a, {}),
    aten.relu_.default: lambda a, k: (F.relu, a, {}),
    aten.silu.default: lambda a, k: (F.silu, a, {}),
    aten.silu_.default: lambda a, k: (F.silu, a, {}),
    aten.sigmoid.default: lambda a, k: (torch.sigmoid, a, {}),
    aten.tanh.default: lambda a, k: (torch.tanh, a, {}),
    aten.hardswish.default: lambda a, k: (F.hardswish, a, {}),
    aten.hardsigmoid.default: lambda a, k: (F.hardsigmoid, a, {}),
    aten.hardtanh.default: lambda a, k: (F.hardtanh, a, {}),
    aten.relu6.default: lambda a, k: (F.relu6, a, {}),
    aten.mean.dim: lambda a, k: (torch.mean, a, dict(k)),
    aten.cat.default: lambda a, k: (torch.cat, a, dict(k)),
    aten.adaptive_avg_pool2d.default: lambda a, k: (F.adaptive_avg_pool2d, a, {}),
    aten.adaptive_avg_pool1d.default: lambda a, k: (F.adaptive_avg_pool1d, a, {}),
    aten.avg_pool2d.default: lambda a, k: (F.avg_pool2d, a, {}),
    aten.exp.default: lambda a, k: (torch.exp, a, {}),
    aten.sqrt.default: lambda a, k: (torch.sqrt, a, {}),
    aten.rsqrt.default: lambda a, k: (torch.rsqrt, a, {}),
    aten.erf.default: lambda a, k: (torch.erf, a, {}),
    aten.neg.default: lambda a, k: (torch.neg, a, {}),
    aten.abs.default: lambda a, k: (torch.abs, a, {}),
    aten.reciprocal.default: lambda a, k: (torch.reciprocal, a, {}),
    aten.where.self: lambda a, k: (torch.where, a, {}),
    aten.maximum.default: lambda a, k: (torch.maximum, a, {}),
    aten.minimum.default: lambda a, k: (torch.minimum, a, {}),
}
_METHODS: dict[Any, str] = {aten.pow.Tensor_Scalar: "pow", aten.sum.dim_IntList: "sum", aten.clamp.default: "clamp"}
_BINARY: dict[Any, Any] = {
    aten.add.Tensor: operator.add,
    aten.add.Scalar: operator.add,
    aten.add_.Tensor: operator.add,
    aten.sub.Tensor: operator.sub,
    aten.sub.Scalar: operator.sub,
    aten.mul.Tensor: operator.mul,
    aten.mul.Scalar: operator.mul,
    aten.mul_.Tensor: operator.mul,
    aten.div.Tensor: operator.truediv,
    aten.div.Scalar: operator.truediv,
}


@dataclass(frozen=True)
class ExportCapture:
    """What the export front end did: the graph module, and the leaves it rolled back."""

    graph_module: fx.GraphModule
    rolled_leaves: tuple[str, ...]


# -- export ---------------------------------------------------------------------------------------------
def _dynamic_shapes(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """Every tensor dimension of the dummy input as ``Dim.AUTO``, so batches may differ in size."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    if args and any(p.kind == p.VAR_POSITIONAL for p in params):
        return None
    auto = torch.export.Dim.AUTO

    def spec(value: Any) -> Any:
        return pytree.tree_map(lambda t: dict.fromkeys(range(t.dim()), auto) if isinstance(t, Tensor) else None, value)

    shapes: dict[str, Any] = {}
    for p, value in zip(params, args):
        shapes[p.name] = spec(value)
    for name, value in kwargs.items():
        shapes[name] = spec(value)
    return shapes


def _batch_of_two(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A batch-1 dummy input repeated to batch 2, so export does not specialise the batch size to 1."""
    leaves = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
    if not leaves or any(t.dim() == 0 or t.shape[0] != 1 for t in leaves):
        return args, kwargs
    doubled = pytree.tree_map(lambda t: torch.cat([t, t]) if isinstance(t, Tensor) else t, (args, kwargs))
    return doubled[0], doubled[1]


def _export(model: nn.Module, dummy_input: Any) -> fx.GraphModule:
    args, kwargs = as_model_args(dummy_input)
    dynamic = _dynamic_shapes(model, args, kwargs)
    try:
        ex_args, ex_kwargs = _batch_of_two(args, kwargs) if dynamic is not None else (args, kwargs)
        program = torch.export.export(model, ex_args, ex_kwargs, dynamic_shapes=dynamic, strict=False)
    except Exception as first:
        if dynamic is None:
            raise
        logger.debug("torch.export with dynamic shapes failed (%s); retrying with static shapes", first)
        program = torch.export.export(model, args, kwargs, strict=False)
    unlifted = program.module()
    assert isinstance(unlifted, fx.GraphModule)
    # a plain GraphModule (export's own refuses .eval()/.train()); it keeps the pytree calling convention
    gm = fx.GraphModule(unlifted, unlifted.graph, type(model).__name__)
    return gm


def is_conv1d_gemm(module: nn.Module) -> bool:
    """GPT-2's ``Conv1D``: a Linear with its weight stored transposed (``x @ W + b``)."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(weight, nn.Parameter)
        and weight.dim() == 2
        and isinstance(getattr(module, "nf", None), int)
    )


def _as_standard(module: nn.Module) -> nn.Module:
    """A Conv1D becomes the ``nn.Linear`` it computes (weight transposed) so it gets a weight quantizer."""
    if not is_conv1d_gemm(module):
        return module
    weight = module.weight
    bias = getattr(module, "bias", None)
    assert isinstance(weight, Tensor)
    linear = nn.Linear(weight.shape[0], weight.shape[1], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight.detach().t())
        if bias is not None:
            linear.bias.copy_(bias.detach())
    return linear


# -- rolling standard layers back into modules ---------------------------------------------------------
def _stack_paths(node: fx.Node) -> list[str]:
    stack = node.meta.get("nn_module_stack") or {}
    out = []
    for value in stack.values():
        path = value[0] if isinstance(value, tuple) else str(value)
        out.append(str(path))
    return out


def _stack_keys(node: fx.Node) -> list[str]:
    return [str(k) for k in (node.meta.get("nn_module_stack") or {})]


def _is_tensor(node: Any) -> bool:
    return isinstance(node, fx.Node) and isinstance(node.meta.get("val"), Tensor)


def _reroll(
    gm: fx.GraphModule, original: nn.Module, is_leaf: Callable[[nn.Module, str], bool]
) -> list[str]:
    """Replace each inlined call of a leaf module (one tensor in, one tensor out) by a call_module."""
    groups: dict[str, list[fx.Node]] = {}
    paths: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        for key, path in zip(_stack_keys(node), _stack_paths(node)):
            if not path:
                continue
            try:
                module = original.get_submodule(path)
            except AttributeError:
                break
            if is_leaf(module, path):
                groups.setdefault(key, []).append(node)
                paths[key] = path
                break
    rolled: list[str] = []
    for key, nodes in groups.items():
        path = paths[key]
        members = set(nodes)
        prefix = f"{path}."
        inputs: list[fx.Node] = []
        for n in nodes:
            for a in n.all_input_nodes:
                if a in members or (a.op == "get_attr" and str(a.target).startswith(prefix)) or not _is_tensor(a):
                    continue
                if a not in inputs:
                    inputs.append(a)
        outputs = [n for n in nodes if any(u not in members for u in n.users)]
        if len(inputs) != 1 or len(outputs) != 1 or not _is_tensor(outputs[0]):
            logger.debug("not rolling %s back into a module: %d inputs, %d outputs", path, len(inputs), len(outputs))
            continue
        out = outputs[0]
        install_module(gm, path, _as_standard(original.get_submodule(path)))
        with gm.graph.inserting_after(out):
            call = gm.graph.call_module(path, (inputs[0],))
        call.meta = dict(out.meta)
        out.replace_all_uses_with(call)
        for n in reversed(nodes):
            if not n.users:
                gm.graph.erase_node(n)
        rolled.append(path)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return rolled


def install_module(gm: fx.GraphModule, path: str, module: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent: nn.Module = gm
    for part in parent_path.split(".") if parent_path else []:
        if not hasattr(parent, part):
            parent.add_module(part, nn.Module())
        parent = getattr(parent, part)
    old = parent._modules.get(attr)
    if isinstance(old, nn.Module):
        for child_name, child in old.named_children():
            if child_name not in module._modules:
                module.add_module(child_name, child)
    if attr in parent._modules:
        parent._modules[attr] = module
    else:
        if hasattr(parent, attr):
            delattr(parent, attr)
        parent.add_module(attr, module)


# -- ATen -> torch functions ---------------------------------------------------------------------------
def _translate(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        t = node.target
        if t in _BINARY:
            if node.kwargs.get("alpha", 1) != 1 or len(node.args) != 2:
                continue
            node.target = _BINARY[t]
            node.kwargs = {}
        elif t is aten.rsub.Scalar and len(node.args) == 2 and not node.kwargs:
            node.target = operator.sub
            node.args = (node.args[1], node.args[0])
        elif t in _ATEN_TO_TORCH:
            fn, args, kwargs = _ATEN_TO_TORCH[t](tuple(node.args), dict(node.kwargs))
            node.target = fn
            node.args = args
            node.kwargs = kwargs
        elif t in _METHODS:
            node.op = "call_method"
            node.target = _METHODS[t]
    gm.recompile()


def _decompose_sdpa(gm: fx.GraphModule) -> int:
    """``scaled_dot_product_attention`` -> matmul, scale, mask, softmax, matmul (each quantizable)."""
    count = 0
    graph = gm.graph
    for node in list(graph.nodes):
        sdpa = (aten.scaled_dot_product_attention.default, F.scaled_dot_product_attention)
        if node.op != "call_function" or node.target not in sdpa:
            continue
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
        bound = dict(zip(names, node.args))
        bound.update(node.kwargs)
        q, k, v = bound["query"], bound["key"], bound["value"]
        mask = bound.get("attn_mask")
        scale = bound.get("scale")
        if scale is None:
            qval = q.meta.get("val") if isinstance(q, fx.Node) else None
            if qval is None or not isinstance(qval.shape[-1], int):
                continue
            scale = 1.0 / math.sqrt(qval.shape[-1])
        meta = {key: value for key, value in node.meta.items() if key in ("nn_module_stack", "stack_trace")}
        before = set(graph.nodes)
        with graph.inserting_before(node):
            if bound.get("enable_gqa"):
                k = graph.call_function(repeat_kv_like, (k, q))
                v = graph.call_function(repeat_kv_like, (v, q))
            kt = graph.call_function(torch.transpose, (k, -2, -1))
            scores = graph.call_function(torch.matmul, (q, kt))
            scores = graph.call_function(operator.mul, (scores, float(scale)))
            if isinstance(mask, fx.Node):
                mval = mask.meta.get("val")
                if isinstance(mval, Tensor) and mval.dtype == torch.bool:
                    scores = graph.call_function(attention_fill, (scores, mask))
                else:
                    scores = graph.call_function(operator.add, (scores, mask))
            if bound.get("is_causal"):
                scores = graph.call_function(causal_fill, (scores,))
            probs = graph.call_function(F.softmax, (scores,), {"dim": -1})
            out = graph.call_function(torch.matmul, (probs, v))
        for n in graph.nodes:
            if n not in before:
                n.meta.update(meta)
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        count += 1
    graph.lint()
    gm.recompile()
    return count


def capture_with_export(
    model: nn.Module, dummy_input: Any, is_leaf: Callable[[nn.Module, str], bool]
) -> ExportCapture:
    """Capture ``model`` with ``torch.export`` and normalise the graph for preparation.

    Raises whatever ``torch.export`` raises; the caller reports it next to the fx error.
    """
    gm = _export(model, dummy_input)
    rolled = _reroll(gm, model, is_leaf)
    _translate(gm)
    n_sdpa = _decompose_sdpa(gm)
    if n_sdpa:
        logger.debug("wrote out %d scaled_dot_product_attention call(s) as matmul/softmax", n_sdpa)
    return ExportCapture(gm, tuple(rolled))


def is_data_movement_target(target: Any) -> bool:
    """True for the ATen ops and helper functions of an exported graph that only move values."""
    return target in ATEN_DATA_MOVEMENT or target in DATA_MOVEMENT_HELPERS
