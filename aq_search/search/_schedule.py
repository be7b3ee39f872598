"""Cost-aware settings: AdaRound's effort follows the bit-width, and stops when it stops paying.

The space's ``adaround.num_iterations`` is the iteration count for weights of 4 bits or fewer, where
rounding matters most. Wider weights round with smaller relative error, so they get fewer iterations:
half at 5-7 bits, a quarter at 8 bits and more (the reference trial keeps AIMET's own counts). Every
AdaRound run of the search stops a layer early once the reconstruction loss of its hard rounding has
not improved for :data:`ADAROUND_PATIENCE` checks (about 40 checks per run).
"""

from __future__ import annotations

__all__ = ["ADAROUND_PATIENCE", "adaround_iterations"]

#: checks without improvement before a layer's AdaRound stops (see ``AdaRoundParams.early_stop_patience``).
ADAROUND_PATIENCE = 5


def adaround_iterations(num_iterations: int, param_bw: int) -> int:
    """Iterations for ``param_bw``-bit weights, given the count for 4-bit weights."""
    if param_bw <= 4:
        scale = 1.0
    elif param_bw < 8:
        scale = 0.5
    else:
        scale = 0.25
    return max(1, round(num_iterations * scale))
