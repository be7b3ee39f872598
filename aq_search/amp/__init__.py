"""Automatic mixed precision: a bit-width candidate per quantizer group, on an accuracy-vs-cost front.

* :func:`choose_mixed_precision` (AIMET-familiar entry point) / :func:`apply_mixed_precision` with a
  :class:`MixedPrecisionConfig` (for pipelines and the search); :func:`set_mixed_precision` replays a
  result's ``config`` on a sim.
* Candidates: :func:`parse_candidate` (``"w4a8"``, ``"fp16"``, AIMET tuples), :class:`Candidate`.
* Groups: :func:`find_quantizer_groups`, :class:`QuantizerGroup`.
* Cost: :func:`layer_costs` (MACs), :class:`CostTable` (BOPs / model size of a config).
* Checking the greedy front: :func:`exhaustive_search`, :func:`front_gap`; plotting: :func:`plot_pareto`.
"""

from ._amp import apply_mixed_precision, choose_mixed_precision, set_mixed_precision
from ._candidates import Candidate, CandidateLike, parse_candidate, parse_candidates
from ._cost import COST_METRICS, CostTable, LayerCost, layer_costs
from ._exhaustive import ExhaustivePoint, FrontGap, exhaustive_search, front_gap
from ._groups import QuantizerGroup, find_quantizer_groups, format_groups, ungrouped_activation_quantizers
from ._plot import plot_pareto
from ._types import (
    PHASE1_METRICS,
    PHASE2_SEARCHES,
    AmpOutcome,
    EvalCallback,
    MixedPrecisionConfig,
    MixedPrecisionResult,
    ParetoPoint,
    SensitivityEntry,
)

__all__ = [
    "COST_METRICS",
    "PHASE1_METRICS",
    "PHASE2_SEARCHES",
    "AmpOutcome",
    "Candidate",
    "CandidateLike",
    "CostTable",
    "EvalCallback",
    "ExhaustivePoint",
    "FrontGap",
    "LayerCost",
    "MixedPrecisionConfig",
    "MixedPrecisionResult",
    "ParetoPoint",
    "QuantizerGroup",
    "SensitivityEntry",
    "apply_mixed_precision",
    "choose_mixed_precision",
    "exhaustive_search",
    "find_quantizer_groups",
    "format_groups",
    "front_gap",
    "layer_costs",
    "parse_candidate",
    "parse_candidates",
    "plot_pareto",
    "set_mixed_precision",
    "ungrouped_activation_quantizers",
]
