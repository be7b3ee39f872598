"""Quantizer groups: the quantizers that must take the same mixed-precision candidate.

A weight layer's group holds its weight quantizer and the activation quantizers feeding it (found
through data movement such as reshape or max-pool). Groups merge (union-find) when they share a
quantizer:

* one activation quantizer feeding several layers (a residual output feeding two convs, a branch
  point) puts those layers in one group: a tensor has one format;
* the inputs of a concat share the format of the concat's output (a concat of tensors in different
  formats would need a requantization per input), so a concat's input quantizers, its output
  quantizer and the layers that read it form one group.

Only enabled quantizers take part; a disabled one stays float and constrains nothing. Activation
quantizers in no group (the model output, an add that feeds another add ...) feed no weight layer:
they cost nothing in BOPs or model size and keep the format the sim gave them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch.fx as fx

from ..quantsim import Concat, QuantSim

__all__ = ["QuantizerGroup", "find_quantizer_groups", "format_groups", "ungrouped_activation_quantizers"]


@dataclass(frozen=True)
class QuantizerGroup:
    """Quantizers that take one candidate together.

    Attributes:
        name: the group's id: its first weight layer in execution order.
        layers: the weight layers of the group (execution order); their weight quantizers are
            ``"<layer>.weight"``.
        activation_quantizers: the activation quantizers of the group, by tensor name (keys of
            ``sim.activation_quantizers``).
    """

    name: str
    layers: tuple[str, ...]
    activation_quantizers: tuple[str, ...]

    @property
    def param_quantizers(self) -> tuple[str, ...]:
        return tuple(f"{layer}.weight" for layer in self.layers)

    def __str__(self) -> str:
        acts = ", ".join(self.activation_quantizers) or "-"
        return f"{self.name}: weights of [{', '.join(self.layers)}]; activations [{acts}]"


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def add(self, x: str) -> None:
        self.parent.setdefault(x, x)

    def find(self, x: str) -> str:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, items: Iterable[str]) -> None:
        items = list(items)
        for item in items:
            self.add(item)
        for other in items[1:]:
            a, b = self.find(items[0]), self.find(other)
            if a != b:
                self.parent[b] = a


def _concat_nodes(sim: QuantSim) -> list[fx.Node]:
    found = []
    for node in sim.model.graph.nodes:
        if node.op == "call_module" and isinstance(sim.model.get_submodule(str(node.target)), Concat):
            found.append(node)
    return found


def _enabled_activations(sim: QuantSim, names: Iterable[str]) -> list[str]:
    quantizers = sim.activation_quantizers
    return [n for n in names if n in quantizers and quantizers[n].enabled]


def find_quantizer_groups(sim: QuantSim) -> tuple[QuantizerGroup, ...]:
    """The quantizer groups of ``sim``, one per set of weight layers that must share a candidate.

    Groups come in the execution order of their first layer.

    Example:
        >>> import torch
        >>> from aq_search import QuantSim
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
        >>> sim = QuantSim(net, torch.randn(1, 3, 8, 8))
        >>> [str(g) for g in find_quantizer_groups(sim)]
        ['0: weights of [0]; activations [input]', '2: weights of [2]; activations [1]']
    """
    uf = _UnionFind()
    layers = sim.quantized_layers
    for layer in layers:
        uf.union([f"L:{layer}"] + [f"A:{a}" for a in _enabled_activations(sim, sim.input_quantizers_of(layer))])
    outputs_of = _quantizer_users(sim)
    for node in _concat_nodes(sim):
        target = str(node.target)
        members = _enabled_activations(sim, sim.input_quantizers_of(target))
        members += _enabled_activations(sim, outputs_of.get(node, []))
        if len(members) > 1:
            uf.union(f"A:{a}" for a in members)
    by_root: dict[str, tuple[list[str], list[str]]] = {}
    for layer in layers:
        by_root.setdefault(uf.find(f"L:{layer}"), ([], []))[0].append(layer)
    for act in sim.activation_quantizers:
        key = f"A:{act}"
        if key in uf.parent:
            root = uf.find(key)
            if root in by_root:
                by_root[root][1].append(act)
    groups = [QuantizerGroup(ls[0], tuple(ls), tuple(acts)) for ls, acts in by_root.values()]
    order = {layer: i for i, layer in enumerate(layers)}
    return tuple(sorted(groups, key=lambda g: order[g.name]))


def _quantizer_users(sim: QuantSim) -> dict[fx.Node, list[str]]:
    """For each graph node, the names of the activation quantizers placed on its output."""
    out: dict[fx.Node, list[str]] = {}
    for node in sim.model.graph.nodes:
        name = node.meta.get("aq_quantizer")
        if name is not None and node.args and isinstance(node.args[0], fx.Node):
            out.setdefault(node.args[0], []).append(str(name))
    return out


def ungrouped_activation_quantizers(sim: QuantSim, groups: Sequence[QuantizerGroup]) -> list[str]:
    """Enabled activation quantizers in no group: AMP leaves them as they are."""
    grouped = {a for g in groups for a in g.activation_quantizers}
    return [n for n, q in sim.activation_quantizers.items() if q.enabled and n not in grouped]


def format_groups(groups: Sequence[QuantizerGroup]) -> str:
    """A readable table of groups: one line per group with its layers and activation quantizers."""
    width = max([len(g.name) for g in groups] + [5])
    lines = [f"{'group':{width}}  layers / activation quantizers"]
    for g in groups:
        lines.append(f"{g.name:{width}}  weights: {', '.join(g.layers)}")
        lines.append(f"{'':{width}}  inputs:  {', '.join(g.activation_quantizers) or '- (float input)'}")
    return "\n".join(lines)
