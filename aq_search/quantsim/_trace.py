"""Running and tracing a model: the dummy-input check, torch.fx tracing and shape propagation."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import TensorMetadata, _extract_tensor_metadata
from torch.utils import _pytree as pytree

from .._data import as_model_args
from .._device import check_same_device
from .._errors import InvalidInputError, ModelPreparationError
from ._layers import AVG_POOLS, BATCHNORMS, ELEMENTWISE_ACTIVATIONS

__all__ = [
    "capture_layer_chain",
    "check_dummy_input",
    "check_model",
    "leaf_spec",
    "propagate_shapes",
    "run_model",
    "trace_model",
]


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


def check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"model must be a torch.nn.Module (a trained FP32 model). Got {type(model).__name__} instead.")
    return model


def run_model(model: nn.Module, dummy_input: Any) -> Any:
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
        return run_model(model, dummy_input)
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


def leaf_spec(leaf_modules: Iterable[type[nn.Module] | str]) -> tuple[tuple[type[nn.Module], ...], frozenset[str]]:
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


def trace_model(model: nn.Module, dummy_input: Any, leaf_modules: Sequence[type[nn.Module] | str]) -> fx.GraphModule:
    types, names = leaf_spec(leaf_modules)
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
            _ShapeProp(gm).run(*flat)
    finally:
        gm.train(training)


_MEMORY_FORMATS = (torch.contiguous_format, torch.channels_last, torch.channels_last_3d)


def _tensor_metadata(t: Tensor) -> TensorMetadata:
    """``torch.fx.passes.shape_prop._extract_tensor_metadata`` for a plain dense tensor, with the memory format
    from the tensor's own contiguity flags (torch's asks ``torch._check``, which imports sympy on first use)."""
    if t.layout != torch.strided or t.is_quantized or (type(t) is not Tensor and not isinstance(t, nn.Parameter)):
        return _extract_tensor_metadata(t)
    fmt = next((f for f in _MEMORY_FORMATS if t.is_contiguous(memory_format=f)), None)
    return TensorMetadata(t.shape, t.dtype, t.requires_grad, t.stride(), fmt, False, {})


class _ShapeProp(fx.Interpreter):
    """``torch.fx.passes.shape_prop.ShapeProp`` on real tensors: the same ``tensor_meta`` and ``type`` per
    node, without its first call's import of ``torch.fx.experimental.symbolic_shapes`` (and sympy, about
    a second), which it needs only for fake tensors."""

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as err:
            raise RuntimeError(f"ShapeProp error for: node={n.format_node()} with meta={n.meta}") from err
        found = False

        def extract(obj: Any) -> Any:
            nonlocal found
            if isinstance(obj, Tensor):
                found = True
                return _tensor_metadata(obj)
            return obj

        meta = map_aggregate(result, extract)
        if found:
            n.meta["tensor_meta"] = meta
        n.meta["type"] = type(result)
        return result


#: Layers that always compute something (an ATen op or more), so torch.export's graph has them too.
#: Not here: layers that can be no-ops (Identity, Dropout in eval, a Flatten of one dimension is
#: checked on shapes), and user classes (their forward may be anything).
_CHAIN_LAYERS: frozenset[type[nn.Module]] = frozenset(
    (
        *(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear),
        *BATCHNORMS,
        *ELEMENTWISE_ACTIVATIONS,
        *AVG_POOLS,
        *(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Flatten),
    )
)


class _ChainTracer(fx.Tracer):
    def __init__(self, is_leaf: Callable[[nn.Module, str], bool]) -> None:
        super().__init__()
        self._is_leaf = is_leaf

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return self._is_leaf(m, module_qualified_name)


def capture_layer_chain(model: nn.Module, dummy_input: Any, is_leaf: Callable[[nn.Module, str], bool]) -> fx.GraphModule | None:
    """The graph of a model that is a chain of standard layers, by symbolic tracing; ``None`` otherwise.

    ``torch.export`` costs seconds (its first call imports ``torch._dynamo``, then it traces on fake
    tensors); symbolic tracing takes milliseconds. When the traced graph is nothing but calls of the
    standard layers in ``_CHAIN_LAYERS`` (exact classes, each called once on one tensor and used once, each a
    leaf by ``is_leaf``, the export front end's rule) from one floating-point tensor input, export's graph after
    rolling those layers back into modules is this graph: the same layers, called in the same order on
    the same values. Anything else (functions, methods, attributes, keyword or defaulted inputs, other
    layers) returns ``None``, and the caller uses export.
    """
    args, kwargs = as_model_args(dummy_input)
    if kwargs or len(args) != 1 or not (isinstance(args[0], Tensor) and args[0].is_floating_point()):
        return None
    tracer = _ChainTracer(is_leaf)
    try:
        graph = tracer.trace(model)
    except Exception:  # noqa: BLE001 - not a chain fx can follow: export decides
        return None
    modules = dict(model.named_modules())
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    calls = [n for n in graph.nodes if n.op == "call_module"]
    if len(placeholders) != 1 or placeholders[0].args:  # defaulted or extra inputs
        return None
    if len(graph.nodes) != len(placeholders) + len(calls) + 1:  # a function, method or attribute
        return None
    targets = [str(n.target) for n in calls]
    if len(set(targets)) != len(targets):  # a layer called twice
        return None
    for node, target in zip(calls, targets, strict=True):
        module = modules.get(target)
        if type(module) not in _CHAIN_LAYERS or node.kwargs or len(node.args) != 1 or not isinstance(node.args[0], fx.Node):
            return None
        if len(node.users) != 1:  # unused (export drops it) or branching: not a chain
            return None
    output = next(n for n in graph.nodes if n.op == "output")
    result = output.args[0]
    if not (isinstance(result, fx.Node) and result.op == "call_module"):
        return None
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    try:
        propagate_shapes(gm, dummy_input)
    except Exception:  # noqa: BLE001 - let export (and its error reporting) handle it
        return None
    for node, target in zip(calls, targets, strict=True):
        module = modules[target]
        if isinstance(module, nn.Flatten) and not _flattens(module, node.args[0]):
            return None  # a Flatten of one dimension returns its input: export records no op for it
    return gm


def _flattens(module: nn.Flatten, source: Any) -> bool:
    """Whether the Flatten merges two or more dimensions of its input (else it is a no-op)."""
    meta = source.meta.get("tensor_meta") if isinstance(source, fx.Node) else None
    shape = getattr(meta, "shape", None)
    if shape is None or len(shape) == 0:
        return False
    rank = len(shape)
    start, end = module.start_dim % rank, module.end_dim % rank
    return end > start
