"""AMP's config and result types: :class:`MixedPrecisionConfig`, :class:`MixedPrecisionResult`,
:class:`ParetoPoint`, :class:`SensitivityEntry`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

from torch import nn

from .._constraints import Constraint, Interval, NoneValue, Options
from ..techniques._config import TechniqueConfig
from ._candidates import Candidate, parse_candidate, parse_candidates
from ._cost import COST_METRICS
from ._groups import QuantizerGroup

#: ``eval_callback(model, num_samples) -> float``, higher is better; ``num_samples=None``: the full set.
EvalCallback = Callable[[nn.Module, "int | None"], Any]
PHASE1_METRICS = ("eval", "sqnr")
PHASE2_SEARCHES = ("binary", "linear")
LIFT_FIRST = ("share", "longest")


# -- config ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MixedPrecisionConfig(TechniqueConfig):
    """Settings of automatic mixed precision (:func:`apply_mixed_precision`).

    Args:
        candidates: two or more candidates (``"w8a8"``, ``"w4a8"``, ``"fp16"`` ...; AIMET tuples are
            accepted and stored by their canonical names).
        num_samples_for_phase_1: samples the eval callback gets in phase 1 (``None``: all).
        num_samples_for_phase_2: samples the eval callback gets in phase 2 and for the baseline
            and FP32 scores (``None``: all, the default).
        cost: what to minimize: ``"bops"`` (bit operations) or ``"size"`` (bits of weights).
        phase1_metric: ``"eval"`` (eval callback on phase-1 samples) or ``"sqnr"`` (SQNR of the
            model outputs on ``forward_pass_callback``'s data; no eval calls in phase 1).
        phase2_search: ``"binary"`` (about log2(moves) eval calls) or ``"linear"`` (every prefix:
            a complete front).
        refine_evals: eval calls allowed for the refinement after phase 2 (0: none, as AIMET).
        lift_first: which config the escape hatch (lifting from the input within a cost budget, see
            :func:`~aq_search.amp.lift_precision`) evaluates first: ``"share"``, the cheapest removing
            most of the removable output noise, or ``"longest"``, the least noisy config found within
            the budget and only that one (one call, met or not). A search pipeline sets
            ``"longest"`` when AdaRound follows AMP. Unused by the top-down search.

    Example:
        >>> MixedPrecisionConfig(candidates=("w8a8", ((8, "int"), (4, "int")))).candidates
        ('w8a8', 'w4a8')
    """

    technique: ClassVar[str] = "amp"

    candidates: tuple[str, ...] = ("w8a8", "w4a8")
    num_samples_for_phase_1: int | None = 128
    num_samples_for_phase_2: int | None = None
    cost: str = "bops"
    phase1_metric: str = "eval"
    phase2_search: str = "binary"
    refine_evals: int = 0
    lift_first: str = "share"

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "num_samples_for_phase_1": [Interval(int, 1, None), NoneValue()],
        "num_samples_for_phase_2": [Interval(int, 1, None), NoneValue()],
        "cost": [Options(*COST_METRICS)],
        "phase1_metric": [Options(*PHASE1_METRICS)],
        "phase2_search": [Options(*PHASE2_SEARCHES)],
        "refine_evals": [Interval(int, 0, None)],
        "lift_first": [Options(*LIFT_FIRST)],
    }

    def __post_init__(self) -> None:
        parsed = parse_candidates(self.candidates, who=type(self).__name__)
        object.__setattr__(self, "candidates", tuple(c.name for c in parsed))
        super().__post_init__()

    @property
    def parsed_candidates(self) -> tuple[Candidate, ...]:
        return tuple(parse_candidate(c) for c in self.candidates)


# -- result ---------------------------------------------------------------------------------------------
class ParetoPoint(NamedTuple):
    """One evaluated config: relative cost, accuracy, and the moves applied (``"group=candidate"``)."""

    relative_cost: float
    accuracy: float
    lowered: tuple[str, ...]


class SensitivityEntry(NamedTuple):
    """Phase 1 for one (group, candidate): the score measured, the sensitivity derived, the cost saved.

    ``score`` is the phase-1 accuracy (metric ``"eval"``) or the output SQNR in dB (``"sqnr"``);
    ``sensitivity`` the accuracy drop from the baseline or the output noise-to-signal ratio;
    ``cost_saved`` the relative cost the move saves (fraction of the baseline's total).
    """

    group: str
    candidate: str
    score: float
    sensitivity: float
    cost_saved: float


@dataclasses.dataclass(frozen=True)
class AmpOutcome:
    """The figures of an AMP run, shared by :class:`MixedPrecisionResult` and its JSON-able summary.

    Attributes:
        accuracy: the eval score of the chosen config (phase-2 samples).
        fp32_accuracy / target_accuracy / baseline_accuracy: the FP32 score, the target, and the
            score with every group at its highest-cost candidate.
        relative_bops / relative_size: cost of the chosen config relative to every group at its
            highest-cost candidate.
        cost: the metric minimized, ``"bops"`` or ``"size"``.
        n_eval_calls: calls of the eval callback (FP32 and baseline included).
        group_config: ``{group name: candidate}``.
        sensitivity: the phase-1 table.
        pareto: the Pareto front of the evaluated configs, highest cost first.
        evaluated: every config evaluated in phase 2 (baseline first).
    """

    accuracy: float
    fp32_accuracy: float
    target_accuracy: float
    baseline_accuracy: float
    relative_bops: float
    relative_size: float
    cost: str
    n_eval_calls: int
    group_config: Mapping[str, str]
    sensitivity: tuple[SensitivityEntry, ...]
    pareto: tuple[ParetoPoint, ...]
    evaluated: tuple[ParetoPoint, ...]

    @property
    def relative_cost(self) -> float:
        """The chosen config's cost in the metric that was minimized."""
        return self.relative_bops if self.cost == "bops" else self.relative_size


@dataclasses.dataclass(frozen=True)
class MixedPrecisionResult(AmpOutcome):
    """What :func:`choose_mixed_precision` found; the config is applied to the sim.

    Attributes:
        config: ``{weight layer name: candidate}`` (every layer of a group has the group's candidate).
        pareto: the Pareto front of the evaluated configs, highest cost first; accuracy falls
            strictly with cost (dominated evaluations are left out; they are in ``evaluated``).
        accuracy: the eval score of the chosen config (phase-2 samples).
        relative_bops / relative_size: cost of the chosen config relative to every group at its
            highest-cost candidate.
        target_met: whether ``accuracy >= target_accuracy``.
        message: one readable sentence on the outcome.
        sensitivity: the phase-1 table.
        groups: the quantizer groups.
        n_eval_calls: calls of the eval callback (FP32 and baseline included).
        group_config: ``{group name: candidate}``.
        evaluated: every config evaluated in phase 2 (baseline first).
    """

    config: Mapping[str, str]
    target_met: bool
    message: str
    groups: tuple[QuantizerGroup, ...]
    phase1_metric: str = "eval"

    def sensitivity_table(self) -> str:
        """Phase 1 as a text table, least sensitive per cost saved first."""
        score = "accuracy" if self.phase1_metric == "eval" else "SQNR dB"
        sens = "drop" if self.phase1_metric == "eval" else "noise/signal"
        width = max([len(e.group) for e in self.sensitivity] + [5])
        lines = [f"{'group':{width}}  candidate  {score:>9}  {sens:>12}  cost saved"]
        for e in self.sensitivity:
            lines.append(f"{e.group:{width}}  {e.candidate:9}  {e.score:9.4f}  {e.sensitivity:12.4g}  {e.cost_saved:10.4f}")
        return "\n".join(lines)

    def summary(self) -> str:
        lines = [self.message, "", "config:"]
        lines += [f"  {g}: {c}" for g, c in self.group_config.items()]
        lines += ["", "Pareto front (relative cost, accuracy):"]
        lines += [f"  {p.relative_cost:.4f}  {p.accuracy:.4f}  {p.lowered[-1] if p.lowered else 'baseline'}" for p in self.pareto]
        return "\n".join(lines)

    def plot(self, path: str | None = None, *, backend: str = "matplotlib") -> Any:
        """The Pareto front as a matplotlib (PNG when ``path`` is given) or plotly figure (HTML)."""
        from ._plot import plot_pareto

        return plot_pareto(self, path, backend=backend)
