"""Helpers shared by the graph techniques: weight layout per layer type, node lookups, module swaps."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from .._constraints import parameter_error
from ..quantsim._layers import BATCHNORMS
from ..quantsim._prepare import is_prepared, prepare_model

__all__ = [
    "CONVS",
    "CONV_TRANSPOSES",
    "LAYERS",
    "batchnorm_nodes",
    "bias_of",
    "constant_input_response",
    "tensor_shape",
    "ensure_bias",
    "groups_of",
    "in_channels",
    "out_channels",
    "weight_of",
    "in_channel_absmax",
    "module_of",
    "num_calls",
    "out_channel_absmax",
    "prepared_copy",
    "scale_in_channels",
    "scale_out_channels",
    "set_module",
]

CONVS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_TRANSPOSES: tuple[type[nn.Module], ...] = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
#: Layers whose weights the graph techniques rescale.
LAYERS: tuple[type[nn.Module], ...] = (*CONVS, *CONV_TRANSPOSES, nn.Linear)


def prepared_copy(model: Any, dummy_input: Any, who: str) -> fx.GraphModule:
    """A prepared copy of ``model`` (raw or already prepared); the caller's model is untouched."""
    if not isinstance(model, nn.Module):
        raise parameter_error("model", who, "a torch.nn.Module", model)
    gm = prepare_model(model, dummy_input)
    assert is_prepared(gm)
    return gm


def module_of(gm: fx.GraphModule, node: Any) -> nn.Module | None:
    """The module a ``call_module`` node calls, else None."""
    if isinstance(node, fx.Node) and node.op == "call_module":
        return gm.get_submodule(str(node.target))
    return None


def num_calls(gm: fx.GraphModule) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            counts[str(node.target)] = counts.get(str(node.target), 0) + 1
    return counts


def batchnorm_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if isinstance(module_of(gm, n), BATCHNORMS)]


def set_module(gm: fx.GraphModule, path: str, module: nn.Module) -> None:
    """Replace the submodule at ``path`` (its graph nodes keep calling the same path)."""
    parent_path, _, attr = path.rpartition(".")
    parent = gm.get_submodule(parent_path) if parent_path else gm
    old = parent._modules.get(attr)
    if old is not None:
        for child_name, child in old.named_children():
            module.add_module(child_name, child)
    parent._modules[attr] = module


# -- typed access to layer attributes ------------------------------------------------------------------
def weight_of(layer: nn.Module) -> Tensor:
    """The layer's weight tensor (the float one: techniques on models run before quantizers exist)."""
    w = layer.weight
    assert isinstance(w, Tensor)
    return w


def bias_of(layer: nn.Module) -> Tensor | None:
    b = layer.bias
    assert b is None or isinstance(b, Tensor)
    return b


def groups_of(layer: nn.Module) -> int:
    return int(getattr(layer, "groups", 1))


# -- weight layout -------------------------------------------------------------------------------------
# Conv: (out, in/groups, *k). ConvTranspose: (in, out/groups, *k). Linear: (out, in).
def out_channel_absmax(layer: nn.Module) -> Tensor:
    """Per output channel, the largest absolute weight (float64)."""
    w = weight_of(layer).detach().double()
    if isinstance(layer, CONV_TRANSPOSES):
        g = groups_of(layer)
        v = w.abs().reshape(g, w.shape[0] // g, w.shape[1], -1)
        return v.amax(dim=(1, 3)).reshape(-1)
    return w.abs().reshape(w.shape[0], -1).amax(dim=1)


def in_channel_absmax(layer: nn.Module) -> Tensor:
    """Per input channel, the largest absolute weight over every output it feeds (float64)."""
    w = weight_of(layer).detach().double().abs()
    if isinstance(layer, CONV_TRANSPOSES):
        return w.reshape(w.shape[0], -1).amax(dim=1)
    if isinstance(layer, CONVS):
        g = groups_of(layer)
        v = w.reshape(g, w.shape[0] // g, w.shape[1], -1)
        return v.amax(dim=(1, 3)).reshape(-1)
    return w.amax(dim=0)


@torch.no_grad()
def scale_out_channels(layer: nn.Module, factor: Tensor) -> None:
    """Multiply output channel ``c`` of the layer (weight and bias) by ``factor[c]``."""
    w = weight_of(layer)
    f = factor.to(w.dtype)
    if isinstance(layer, CONV_TRANSPOSES):
        g = groups_of(layer)
        ipg, opg = w.shape[0] // g, w.shape[1]
        per_element = f.reshape(g, 1, opg).expand(g, ipg, opg).reshape(w.shape[0], opg)
        w.mul_(per_element.reshape(w.shape[0], opg, *([1] * (w.dim() - 2))))
    else:
        w.mul_(f.reshape([-1] + [1] * (w.dim() - 1)))
    bias = bias_of(layer)
    if bias is not None:
        bias.mul_(f)


@torch.no_grad()
def scale_in_channels(layer: nn.Module, factor: Tensor) -> None:
    """Multiply input channel ``c`` of the layer's weight by ``factor[c]`` (the bias is unchanged)."""
    w = weight_of(layer)
    f = factor.to(w.dtype)
    if isinstance(layer, CONV_TRANSPOSES):
        w.mul_(f.reshape([-1] + [1] * (w.dim() - 1)))
    elif isinstance(layer, CONVS):
        g = groups_of(layer)
        opg, ipg = w.shape[0] // g, w.shape[1]
        view = w.view(g, opg, ipg, -1)
        view.mul_(f.reshape(g, 1, ipg, 1))
    else:
        w.mul_(f.reshape(1, -1))


@torch.no_grad()
def constant_input_response(layer: nn.Module, value: Tensor) -> Tensor:
    """What a Conv/Linear layer's weights (no bias) output for an input that is ``value[c]`` on every
    position of input channel ``c``: ``sum_{i, k} W[o, i, k] value[group(o), i]`` per output ``o`` (float64).

    Exact away from zero-padded borders. Used to move a per-channel constant through a layer
    (BatchNorm folded into the next layer, high-bias absorption).
    """
    w = weight_of(layer).detach().double()
    v = value.double()
    if isinstance(layer, nn.Linear):
        return w @ v
    g = groups_of(layer)
    opg, ipg = w.shape[0] // g, w.shape[1]
    return (w.reshape(g, opg, ipg, -1) * v.reshape(g, 1, ipg, 1)).sum(dim=(2, 3)).reshape(-1)


def tensor_shape(node: object) -> tuple[int, ...] | None:
    """The output shape recorded on an fx node by shape propagation, if any."""
    meta = getattr(node, "meta", None)
    shape = getattr(meta.get("tensor_meta"), "shape", None) if isinstance(meta, dict) else None
    return tuple(shape) if shape is not None else None


def out_channels(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return int(layer.out_features)
    return int(getattr(layer, "out_channels"))  # noqa: B009 - typed access


def in_channels(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return int(layer.in_features)
    return int(getattr(layer, "in_channels"))  # noqa: B009 - typed access


def ensure_bias(layer: nn.Module) -> nn.Parameter:
    """The layer's bias, created as zeros when it has none."""
    if layer.bias is None:
        w = weight_of(layer)
        layer.bias = nn.Parameter(torch.zeros(out_channels(layer), dtype=w.dtype, device=w.device))
    bias = layer.bias
    assert isinstance(bias, nn.Parameter)
    return bias
