"""AdaRound's early stop: keep the best hard rounding seen, stop when it stops improving.

Every ``interval`` iterations after the warm start, the reconstruction loss of the current *hard*
rounding (``h(V) >= 0.5``, what AdaRound returns) is measured on one fixed batch of the layer's cached
data. The best rounding seen is kept; after ``patience`` checks without a relative improvement of at
least ``min_delta`` the optimization stops. The result is the best hard rounding measured, so stopping
early never returns a rounding worse (on that batch) than one already seen.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["EarlyStop", "check_interval"]

_CHECKS = 40  # checks over a full run
_MIN_INTERVAL = 25


def check_interval(num_iterations: int) -> int:
    """Iterations between two checks: about 40 checks per run, at least 25 iterations apart."""
    return max(_MIN_INTERVAL, num_iterations // _CHECKS)


class EarlyStop:
    """Tracks the best hard rounding by its reconstruction loss.

    Args:
        loss_of: ``loss_of(hard rounding) -> float`` on the fixed check batch.
        patience: checks without improvement before stopping (0: never stop early; still keeps the best).
        min_delta: relative improvement that counts.
    """

    def __init__(self, loss_of: Callable[[Tensor], float], patience: int, min_delta: float = 1e-3) -> None:
        self.loss_of = loss_of
        self.patience = patience
        self.min_delta = min_delta
        self.best_loss = math.inf
        self.best: Tensor | None = None
        self.stale = 0
        self.checks = 0

    def check(self, hard: Tensor) -> bool:
        """Record ``hard``; returns True when the optimization should stop."""
        self.checks += 1
        loss = self.loss_of(hard)
        improved = loss < self.best_loss * (1.0 - self.min_delta)
        if loss < self.best_loss:
            self.best_loss, self.best = loss, hard.clone()
        if improved:
            self.stale = 0
            return False
        self.stale += 1
        return self.patience > 0 and self.stale >= self.patience

    def result(self, final: Tensor) -> Tensor:
        """The better of ``final`` and the best rounding seen."""
        if self.best is None:
            return final
        with torch.no_grad():
            return final if self.loss_of(final) <= self.best_loss else self.best
