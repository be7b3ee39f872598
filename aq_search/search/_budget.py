"""The cost budget: what the user asked for (``param_bw``/``output_bw``) bounds what a result may cost.

A result may cost at most ``max_relative_bops`` times the bit operations of the same model with every
quantized layer at ``w{param_bw}a{output_bw}`` (the *requested* configuration). A model over that budget
never meets the target, however accurate: AMP may raise a few sensitive layers, not the whole model.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from .._errors import InvalidInputError
from ..quantsim import QuantSim

__all__ = ["DEFAULT_MAX_RELATIVE_BOPS", "Budget", "check_max_relative_bops"]

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
        from ..amp import layer_costs

        acts = sim.activation_quantizers
        total = requested = 0.0
        for layer, cost in layer_costs(sim).items():
            pq = sim.param_quantizer(layer)
            inputs = [acts[a] for a in sim.input_quantizers_of(layer)]
            p_bits = pq.bitwidth if pq.enabled else _FLOAT_BITS
            a_bits = max((q.bitwidth if q.enabled else _FLOAT_BITS for q in inputs), default=_FLOAT_BITS)
            p_req = self.param_bw if pq.enabled else _FLOAT_BITS
            a_req = self.output_bw if any(q.enabled for q in inputs) else _FLOAT_BITS
            total += cost.macs * p_bits * a_bits
            requested += cost.macs * p_req * a_req
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
