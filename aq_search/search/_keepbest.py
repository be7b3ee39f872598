"""Keep-best: a pipeline's result is its best scored stage, not its last.

A stage can make a model worse (AMP that raises nothing useful, AdaRound with a bad regularizer, a
per-tensor scheme after CLE). AIMET keeps the best stage; so does :func:`~aq_search.search.run_pipeline`:
:class:`KeepBest` holds the best model seen so far (its sim, float model and stage index) and the
pipeline goes on with a copy, so a later stage never overwrites it.

Ranking: a model within the cost budget beats one over it; then the higher score wins; a tie keeps
the earlier (shorter, cheaper) stage. Full-evaluation scores and subset scores are kept apart: the best
subset-scored stage is confirmed with a full evaluation at the end when it could beat the best full one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["KeepBest", "Kept"]


@dataclass
class Kept:
    """One scored stage kept as a candidate result."""

    index: int
    score: float
    num_samples: int | None
    within_budget: bool
    sim: Any
    model: Any
    amp_result: Any = None

    @property
    def rank(self) -> tuple[bool, float]:
        return (self.within_budget, self.score)


class KeepBest:
    """The best full-evaluation stage and the best subset-scored stage seen so far."""

    def __init__(self) -> None:
        self.full: Kept | None = None
        self.subset: Kept | None = None

    def offer(self, kept: Kept) -> None:
        """Consider a scored stage (ties keep the earlier stage)."""
        if kept.num_samples is None:
            if self.full is None or kept.rank > self.full.rank:
                self.full = kept
            if self.subset is not None and self.subset.index == kept.index:
                self.subset = None  # now confirmed in full
        elif self.subset is None or kept.rank > self.subset.rank:
            self.subset = kept

    def holds(self, sim: Any) -> bool:
        """Whether ``sim`` is a kept result (then a stage must not modify it in place)."""
        return any(k is not None and k.sim is sim for k in (self.full, self.subset))

    def to_confirm(self) -> Kept | None:
        """The subset-scored stage that could beat the best full score (to evaluate in full), if any."""
        if self.subset is None:
            return None
        if self.full is None or self.subset.rank > self.full.rank:
            return self.subset
        return None

    def best(self) -> Kept | None:
        return self.full
