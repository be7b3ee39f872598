"""Exhaustive search over every mixed-precision config, to measure how far the greedy front is from optimal.

Only for small models: the number of configs is ``len(candidates) ** len(groups)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from tqdm.auto import tqdm

from .._errors import InvalidInputError
from ..quantsim import QuantSim
from ._candidates import CandidateLike, parse_candidates
from ._cost import CostTable
from ._evaluate import _Evaluator
from ._groups import find_quantizer_groups
from ._state import GroupPrecisions
from ._types import EvalCallback, ParetoPoint

__all__ = ["ExhaustivePoint", "FrontGap", "exhaustive_search", "front_gap"]


class ExhaustivePoint(NamedTuple):
    relative_cost: float
    accuracy: float
    config: Mapping[str, str]


class FrontGap(NamedTuple):
    """At the cost of one greedy front point: the best accuracy any config of at most that cost reaches."""

    relative_cost: float
    greedy_accuracy: float
    best_accuracy: float
    gap: float


def exhaustive_search(
    sim: QuantSim,
    candidates: Sequence[CandidateLike],
    eval_callback: EvalCallback,
    *,
    cost: str = "bops",
    num_samples: int | None = None,
    max_configs: int = 1024,
    progress: bool = True,
) -> tuple[ExhaustivePoint, ...]:
    """Evaluate every config ``{group: candidate}``; the sim is left as it was.

    Raises:
        InvalidInputError: more than ``max_configs`` configs.
    """
    parsed = parse_candidates(candidates, who="exhaustive_search")
    groups = find_quantizer_groups(sim)
    n = len(parsed) ** len(groups)
    if n > max_configs:
        raise InvalidInputError(
            f"Exhaustive search over {len(groups)} groups x {len(parsed)} candidates is {n} configs, more than "
            f"max_configs={max_configs}. Use fewer candidates or a smaller model, or raise max_configs."
        )
    table = CostTable(sim, groups, parsed)
    precisions = GroupPrecisions(sim, groups)
    precisions.check_statistics(parsed)
    evaluate = _Evaluator(sim, eval_callback)
    points = []
    try:
        for combo in tqdm(
            itertools.product(parsed, repeat=len(groups)), total=n, desc="exhaustive AMP", disable=None if progress else True
        ):
            assignment = {g.name: c for g, c in zip(groups, combo)}
            precisions.apply(assignment)
            acc = evaluate(num_samples, f"exhaustive search ({', '.join(c.name for c in combo)})")
            points.append(ExhaustivePoint(table.relative(assignment, cost), acc, {g: c.name for g, c in assignment.items()}))
    finally:
        precisions.restore()
    return tuple(points)


def front_gap(
    front: Sequence[ParetoPoint], exhaustive: Sequence[ExhaustivePoint], tolerance: float = 1e-9
) -> tuple[FrontGap, ...]:
    """For each greedy point: best exhaustive accuracy at no higher cost, minus the greedy accuracy."""
    gaps = []
    for p in front:
        best = max((e.accuracy for e in exhaustive if e.relative_cost <= p.relative_cost + tolerance), default=-math.inf)
        gaps.append(FrontGap(p.relative_cost, p.accuracy, best, best - p.accuracy))
    return tuple(gaps)
