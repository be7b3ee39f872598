"""Building a QuantSim's graph: quantizer insertion, activation fusing, and the weight helpers."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch
import torch.fx as fx
import torch.nn.utils.parametrize as parametrize
from torch import nn

from ._layers import BATCHNORMS, FUSABLE_ACTIVATIONS, FUSABLE_PRODUCERS, PASSTHROUGH_LAYERS, WEIGHT_LAYERS
from ._quantizer import FakeQuantizer

if TYPE_CHECKING:
    from ._sim import QuantSim

__all__ = ["QUANTIZER_ROOT", "float_weight", "fuse_activations", "insert_quantizers", "unfuse_activations", "weight_axis"]

#: Name of the ``nn.ModuleDict`` holding the activation quantizers in the sim's model.
QUANTIZER_ROOT = "activation_quantizers"


def _key(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


def weight_axis(module: nn.Module) -> int | None:
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return 1
    if isinstance(module, nn.Embedding):
        return None
    return 0


def float_weight(module: nn.Module) -> torch.Tensor:
    """The module's float weight (under the parametrization when there is one)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original  # type: ignore[union-attr,return-value]
    return module.weight  # type: ignore[return-value]


def _new_activation_quantizer(sim: QuantSim, enabled: bool) -> FakeQuantizer:
    return FakeQuantizer(
        kind="activation",
        bitwidth=sim.default_output_bw or 8,
        symmetric=sim.activation_symmetric,
        scheme=sim._act_estimator,
        enabled=enabled and sim.default_output_bw is not None,
    )


def insert_quantizers(sim: QuantSim) -> None:
    gm = sim.model
    store = nn.ModuleDict()
    gm.add_module(QUANTIZER_ROOT, store)
    graph = gm.graph
    calls: dict[str, int] = {}
    for node in list(graph.nodes):
        if node.op == "placeholder":
            tm = node.meta.get("tensor_meta")
            if tm is None or not hasattr(tm, "dtype") or not tm.dtype.is_floating_point:
                continue
            name = str(node.target)
            sim._input_names.append(name)
            _add_activation_node(sim, node, name, enabled=True, store=store)
        elif node.op == "call_module":
            target = str(node.target)
            module = gm.get_submodule(target)
            if isinstance(module, WEIGHT_LAYERS) and not parametrize.is_parametrized(module, "weight"):
                _add_param_quantizer(sim, target, module)
            if isinstance(module, PASSTHROUGH_LAYERS):
                continue
            tm = node.meta.get("tensor_meta")
            if tm is None or not hasattr(tm, "dtype") or not tm.dtype.is_floating_point:
                continue
            calls[target] = calls.get(target, 0) + 1
            name = target if calls[target] == 1 else f"{target}#{calls[target] - 1}"
            enabled = not _fused(sim, node, module)
            _add_activation_node(sim, node, name, enabled=enabled, store=store)
            sim._output_of.setdefault(target, []).append(name)
    fuse_activations(sim)
    gm.recompile()


def fuse_activations(sim: QuantSim) -> None:
    """Fold each ReLU/ReLU6/Hardtanh into the quantizer of its output (see ``FakeQuantizer.fused_clamp``).

    The activation node leaves the graph (its module stays, unused); :meth:`unfuse_activations`
    puts it back, e.g. for export.
    """
    graph = sim.model.graph
    for qnode in list(graph.nodes):
        name = qnode.meta.get("aq_quantizer")
        if name is None or len(qnode.args) != 1:
            continue
        act = qnode.args[0]
        if not isinstance(act, fx.Node) or act.op != "call_module" or len(act.users) != 1 or len(act.args) != 1:
            continue
        module = sim.model.get_submodule(str(act.target))
        if type(module) is nn.ReLU:
            clamp = (0.0, float("inf"))
        elif type(module) is nn.ReLU6:
            clamp = (0.0, 6.0)
        elif type(module) is nn.Hardtanh and module.min_val <= 0.0 <= module.max_val:
            clamp = (float(module.min_val), float(module.max_val))
        else:
            continue
        quantizer = sim._activation[name]
        quantizer.fused_clamp = clamp
        qnode.args = (act.args[0],)
        qnode.meta["aq_fused"] = str(act.target)
        graph.erase_node(act)


def unfuse_activations(sim: QuantSim) -> None:
    """Put the activation ops folded into quantizers back into the graph (same outputs, slower)."""
    graph = sim.model.graph
    for qnode in list(graph.nodes):
        target = qnode.meta.pop("aq_fused", None)
        if target is None:
            continue
        with graph.inserting_before(qnode):
            act = graph.call_module(target, (qnode.args[0],))
        act.meta = {k: v for k, v in qnode.meta.items() if k in ("tensor_meta", "nn_module_stack")}
        qnode.args = (act,)
        sim._activation[qnode.meta["aq_quantizer"]].fused_clamp = None
    graph.lint()
    sim.model.recompile()


def _fused(sim: QuantSim, node: fx.Node, module: nn.Module) -> bool:
    if not isinstance(module, FUSABLE_PRODUCERS) or len(node.users) != 1:
        return False
    user = next(iter(node.users))
    if user.op != "call_module":
        return False
    consumer = sim.model.get_submodule(str(user.target))
    if isinstance(consumer, FUSABLE_ACTIVATIONS):
        return True
    return isinstance(consumer, BATCHNORMS) and isinstance(module, WEIGHT_LAYERS)


def _add_activation_node(sim: QuantSim, node: fx.Node, name: str, *, enabled: bool, store: nn.ModuleDict) -> None:
    key = _key(name)
    while key in store:
        key += "_"
    quantizer = _new_activation_quantizer(sim, enabled)
    store[key] = quantizer
    sim._activation[name] = quantizer
    users = list(node.users)
    with sim.model.graph.inserting_after(node):
        qnode = sim.model.graph.call_module(f"{QUANTIZER_ROOT}.{key}", (node,))
    qnode.meta = {k: v for k, v in node.meta.items() if k in ("tensor_meta", "nn_module_stack")}
    qnode.meta["aq_quantizer"] = name
    for user in users:
        user.replace_input_with(node, qnode)


def _add_param_quantizer(sim: QuantSim, name: str, module: nn.Module) -> None:
    axis = weight_axis(module) if sim.per_channel else None
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        return
    quantizer = FakeQuantizer(
        kind="param",
        bitwidth=sim.default_param_bw or 8,
        scheme=sim._param_estimator,
        axis=axis,
        enabled=sim.default_param_bw is not None,
    )
    parametrize.register_parametrization(module, "weight", quantizer, unsafe=True)
    sim._param[f"{name}.weight"] = quantizer
