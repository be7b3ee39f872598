"""The cost budget: what the user asked for (``param_bw``/``output_bw``) bounds what a result may cost.

A result may cost at most ``max_relative_bops`` times the bit operations of the same model with every
quantized layer at ``w{param_bw}a{output_bw}`` (the *requested* configuration). A model over that budget
never meets the target, however accurate: AMP may raise a few sensitive layers, not the whole model.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

from .._errors import InvalidInputError
from ..quantsim import QuantSim

__all__ = ["DEFAULT_MAX_RELATIVE_BOPS", "Budget", "LayerBits", "check_max_relative_bops", "layer_bits"]

logger = logging.getLogger(__name__)

#: A result may cost this many times the BOPs of the all-``w{param_bw}a{output_bw}`` model by default.
DEFAULT_MAX_RELATIVE_BOPS = 1.5
_FLOAT_BITS = 32
_TOLERANCE = 1e-9


def check_max_relative_bops(value: object, where: str = "AutoQuant") -> float:
    """``value`` as a float >= 1, or an :class:`InvalidInputError` naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 1.0:
        raise InvalidInputError(
            f"The 'max_relative_bops' parameter of {where} must be a number >= 1 (a result may cost at most that many "
            f"times the BOPs of the all-w<param_bw>a<output_bw> model). Got {value!r} instead."
        )
    return float(value)


class LayerBits(NamedTuple):
    """One layer's MACs and the bit-widths its BOPs count (a float tensor counts 32 bits)."""

    macs: float
    param_bits: int
    input_bits: int
    param_enabled: bool
    input_enabled: bool


def layer_bits(sim: QuantSim) -> list[LayerBits]:
    """Every costed layer of ``sim``: its MACs, weight bits and widest input-activation bits."""
    from ..amp import layer_costs

    acts = sim.activation_quantizers
    out = []
    for layer, cost in layer_costs(sim).items():
        pq = sim.param_quantizer(layer)
        inputs = [acts[a] for a in sim.input_quantizers_of(layer)]
        out.append(
            LayerBits(
                macs=cost.macs,
                param_bits=pq.bitwidth if pq.enabled else _FLOAT_BITS,
                input_bits=max((q.bitwidth if q.enabled else _FLOAT_BITS for q in inputs), default=_FLOAT_BITS),
                param_enabled=pq.enabled,
                input_enabled=any(q.enabled for q in inputs),
            )
        )
    return out


@dataclass(frozen=True)
class Budget:
    """The requested bit-widths and how much more a result may cost.

    Attributes:
        param_bw / output_bw: the requested weight / activation bit-widths.
        max_relative_bops: a result may cost at most this times the requested configuration's BOPs.
    """

    param_bw: int
    output_bw: int
    max_relative_bops: float = DEFAULT_MAX_RELATIVE_BOPS

    @property
    def requested(self) -> str:
        return f"w{self.param_bw}a{self.output_bw}"

    def bops(self, sim: QuantSim) -> tuple[float, float]:
        """``(BOPs of sim, BOPs of the same sim with every enabled quantizer at the requested bit-widths)``.

        BOPs of a layer = MACs x weight bits x input-activation bits (a float tensor counts 32 bits).
        """
        total = requested = 0.0
        for layer in layer_bits(sim):
            p_req = self.param_bw if layer.param_enabled else _FLOAT_BITS
            a_req = self.output_bw if layer.input_enabled else _FLOAT_BITS
            total += layer.macs * layer.param_bits * layer.input_bits
            requested += layer.macs * p_req * a_req
        return total, requested

    def relative(self, sim: QuantSim) -> float | None:
        """BOPs of ``sim`` relative to the requested configuration (1.0: exactly what was asked for)."""
        try:
            total, requested = self.bops(sim)
        except Exception:  # a model whose MACs cannot be counted: no budget can be checked
            logger.debug("BOPs unavailable", exc_info=True)
            return None
        return total / requested if requested else None

    def allows(self, relative: float | None) -> bool:
        """Whether a result costing ``relative`` x the requested BOPs is within the budget (unknown: yes)."""
        return relative is None or relative <= self.max_relative_bops + _TOLERANCE

    def describe(self, relative: float | None) -> str:
        if relative is None:
            return "cost unknown"
        over = "" if self.allows(relative) else f", over the {self.max_relative_bops:g}x budget"
        return f"{relative:.3f}x the BOPs of all-{self.requested}{over}"
