"""The cost of a mixed-precision config: bit operations (BOPs) or model size.

MACs (multiply-accumulates) per weight layer, from the shapes recorded when the sim was traced, for
one forward pass of the sim's ``dummy_input``:

===============  =================================================================================
layer            MACs
===============  =================================================================================
Conv1d/2d/3d     output elements x (in_channels / groups) x kernel elements
ConvTranspose    input elements x (out_channels / groups) x kernel elements
Linear           output elements x in_features
Embedding        0 (a table lookup)
===============  =================================================================================

A layer called several times counts once per call. Matmuls between two activations (attention)
are not counted: neither operand is a weight, and their quantizers are not searched.

BOPs of a layer = MACs x weight bits x bits of the activation feeding it; a float format counts its
width (fp16: 16, fp32: 32), and so does a tensor whose quantizer is disabled (32: it stays float).
Model size = weight elements x weight bits (biases are left out: they stay 32-bit in every config).
Both are reported relative to the config where every group takes its highest-cost candidate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from .._errors import InvalidInputError
from ..quantsim import QuantSim
from ._candidates import Candidate
from ._groups import QuantizerGroup

__all__ = ["COST_METRICS", "CostTable", "LayerCost", "layer_costs"]

#: The cost metrics mixed precision can minimize.
COST_METRICS = ("bops", "size")
_FLOAT_BITS = 32

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass(frozen=True)
class LayerCost:
    """Size of one weight layer: MACs for one pass of the dummy input, and weight elements."""

    name: str
    macs: int
    params: int


def _shape(node: object) -> tuple[int, ...] | None:
    meta = getattr(node, "meta", {}).get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(int(d) for d in shape) if shape is not None else None


def _macs(module: nn.Module, in_shape: tuple[int, ...] | None, out_shape: tuple[int, ...] | None) -> int | None:
    if isinstance(module, _CONV):
        if out_shape is None:
            return None
        return math.prod(out_shape) * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, _CONV_T):
        if in_shape is None:
            return None
        return math.prod(in_shape) * (module.out_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        if out_shape is None:
            return None
        return math.prod(out_shape) * module.in_features
    return 0


def layer_costs(sim: QuantSim) -> dict[str, LayerCost]:
    """MACs and weight elements of every quantized layer of ``sim`` (execution order).

    Example:
        >>> import torch
        >>> from aq_search import QuantSim
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(), torch.nn.Linear(288, 10))
        >>> sim = QuantSim(net, torch.randn(1, 3, 8, 8))
        >>> {name: c.macs for name, c in layer_costs(sim).items()}  # 8*6*6 * 3*3*3, 10 * 288
        {'0': 7776, '2': 2880}
    """
    macs: dict[str, int] = {}
    layers = set(sim.quantized_layers)
    for node in sim.model.graph.nodes:
        if node.op != "call_module" or str(node.target) not in layers:
            continue
        name = str(node.target)
        module = sim.layer(name)
        in_shape = _shape(node.args[0]) if node.args else None
        count = _macs(module, in_shape, _shape(node))
        if count is None:
            raise InvalidInputError(
                f"Cannot count the MACs of layer {name!r}: its traced node has no shape information. "
                "Build the QuantSim from a model and dummy_input that torch.fx shape propagation accepts."
            )
        macs[name] = macs.get(name, 0) + count
    return {name: LayerCost(name, macs.get(name, 0), int(sim.float_weight(name).numel())) for name in sim.quantized_layers}


@dataclass(frozen=True)
class _LayerBits:
    """Which of a layer's tensors follow the candidate (True) or stay as they are (False: float)."""

    name: str
    macs: int
    params: int
    param_quantized: bool
    input_quantized: bool


class CostTable:
    """BOPs and model size of every (group, candidate) pair; the cost of a config is their sum.

    Args:
        sim: the sim (for shapes and which quantizers are enabled).
        groups: its quantizer groups (:func:`~aq_search.amp.find_quantizer_groups`).
        candidates: the candidates.
    """

    def __init__(self, sim: QuantSim, groups: Sequence[QuantizerGroup], candidates: Sequence[Candidate]) -> None:
        costs = layer_costs(sim)
        acts = sim.activation_quantizers
        self.groups = tuple(groups)
        self.candidates = tuple(candidates)
        self._layers: dict[str, list[_LayerBits]] = {}
        for group in self.groups:
            members = set(group.activation_quantizers)
            bits = []
            for layer in group.layers:
                inputs = [a for a in sim.input_quantizers_of(layer) if a in members and acts[a].enabled]
                bits.append(
                    _LayerBits(
                        layer,
                        costs[layer].macs,
                        costs[layer].params,
                        sim.param_quantizer(layer).enabled,
                        bool(inputs),
                    )
                )
            self._layers[group.name] = bits
        self._bops: dict[tuple[str, Candidate], int] = {}
        self._size: dict[tuple[str, Candidate], int] = {}
        for group in self.groups:
            for cand in self.candidates:
                self._bops[group.name, cand] = self._group_bops(group.name, cand)
                self._size[group.name, cand] = self._group_size(group.name, cand)

    def _group_bops(self, group: str, cand: Candidate) -> int:
        return sum(_bops(lb, cand) for lb in self._layers[group])

    def _group_size(self, group: str, cand: Candidate) -> int:
        return sum(lb.params * (cand.param_bw if lb.param_quantized else _FLOAT_BITS) for lb in self._layers[group])

    def group_cost(self, group: str, candidate: Candidate, metric: str = "bops") -> int:
        """Absolute cost of one group at one candidate (bit operations, or bits of weights)."""
        return self._bops[group, candidate] if _check_metric(metric) == "bops" else self._size[group, candidate]

    def highest(self, group: str, metric: str = "bops") -> Candidate:
        """The group's highest-cost candidate; ties go to more total bits, then to the first listed."""
        order = {c: i for i, c in enumerate(self.candidates)}
        return max(
            self.candidates,
            key=lambda c: (self.group_cost(group, c, metric), c.param_bw + c.activation_bw, -order[c]),
        )

    def baseline(self, metric: str = "bops") -> dict[str, Candidate]:
        """Every group at its highest-cost candidate: the config costs are relative to."""
        return {g.name: self.highest(g.name, metric) for g in self.groups}

    def cost(self, assignment: Mapping[str, Candidate], metric: str = "bops") -> int:
        """Absolute cost of a config ``{group name: candidate}``."""
        return sum(self.group_cost(g, c, metric) for g, c in assignment.items())

    def relative(self, assignment: Mapping[str, Candidate], metric: str = "bops") -> float:
        """Cost of a config relative to :meth:`baseline` (1.0 = every group at its highest candidate)."""
        base = self.cost(self.baseline(metric), metric)
        return self.cost(assignment, metric) / base if base else 0.0

    def cost_of(self, assignment: Mapping[str, Candidate], metric: str = "bops") -> int:
        """Absolute cost of a config whose candidates need not be among :attr:`candidates` (e.g. the input's)."""
        fn = self._group_bops if _check_metric(metric) == "bops" else self._group_size
        return sum(fn(g, c) for g, c in assignment.items())

    def layer_bops(self, assignment: Mapping[str, Candidate]) -> dict[str, int]:
        """BOPs per weight layer under a config."""
        out: dict[str, int] = {}
        for group, cand in assignment.items():
            for lb in self._layers[group]:
                out[lb.name] = _bops(lb, cand)
        return out


def _bops(lb: _LayerBits, cand: Candidate) -> int:
    """BOPs of one weight layer at a candidate: MACs x weight bits x input-activation bits (float: 32 bits)."""
    p = cand.param_bw if lb.param_quantized else _FLOAT_BITS
    a = cand.activation_bw if lb.input_quantized else _FLOAT_BITS
    return lb.macs * p * a


def _check_metric(metric: str) -> str:
    if metric not in COST_METRICS:
        raise InvalidInputError(f"The 'cost' parameter must be one of {list(COST_METRICS)}. Got {metric!r} instead.")
    return metric
