"""Graph rewrites of preparation: functional ops become modules, shared stateless modules are copied."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ._capture import install_module
from ._functional import attr_at, functional_module, is_data_movement, node_scope, weighted_module
from ._layers import KNOWN_LEAVES, PASSTHROUGH_LAYERS, WEIGHT_LAYERS
from ._report import Problem, _State

__all__ = ["convert_functionals", "dedupe_stateless_modules", "survey"]


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
    owner = attr_at(gm, path)
    if type(owner) is not nn.Module or path in taken:
        return None
    if {n for n, _ in owner.named_parameters(recurse=False)} - {"weight", "bias"}:
        return None
    return path


def convert_functionals(gm: fx.GraphModule, state: _State) -> None:
    taken: set[str] = set()
    attrs_before = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    for node in list(gm.graph.nodes):
        if node.op not in ("call_function", "call_method"):
            continue
        weighted = weighted_module(gm, node) if node.op == "call_function" else None
        path: str | None = None
        if weighted is not None:
            module, call_args, base, param_nodes = weighted
            path = _owner_path(gm, param_nodes, taken)
            if path is None:
                first = param_nodes[0]
                scope = str(first.target).rpartition(".")[0] if isinstance(first, fx.Node) else node_scope(node)
                path = _unique_name(gm, f"{scope}.{base}" if scope else base, taken)
            taken.add(path)
        else:
            found = functional_module(node)
            if found is None:
                _note_unconverted(node, state)
                continue
            module, call_args, base = found
            scope = node_scope(node)
            path = _unique_name(gm, f"{scope}.{base}" if scope else base, taken)
        module = _materialize(module)
        install_module(gm, path, module)
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
        parent = attr_at(gm, parent_path) if parent_path else gm
        if type(parent) is nn.Module and attr in parent._parameters:
            del parent._parameters[attr]
        elif type(parent) is nn.Module and attr in parent._buffers:
            del parent._buffers[attr]
    gm.recompile()


def _note_unconverted(node: fx.Node, state: _State) -> None:
    if is_data_movement(node):
        return
    tm = node.meta.get("tensor_meta")
    if tm is None or not hasattr(tm, "dtype") or not tm.dtype.is_floating_point:
        return
    state.problems.append(
        Problem(
            "warning",
            f"{node_scope(node) or '<model>'} ({node.name})",
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


def dedupe_stateless_modules(gm: fx.GraphModule, state: _State) -> None:
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


def survey(gm: fx.GraphModule, state: _State) -> tuple[int, int]:
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
        if not isinstance(module, KNOWN_LEAVES):
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
