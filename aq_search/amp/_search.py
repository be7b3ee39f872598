"""The AMP search state: phase 1 (sensitivity), phase 2 (the front) and refinement."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

from torch import Tensor
from tqdm.auto import tqdm

from .._numerics import pareto_front
from ..quantsim import QuantSim
from ._candidates import Candidate, parse_candidate
from ._cost import CostTable
from ._evaluate import _describe, _Evaluator, _noise_ratio, _OutputProbe, _sqnr_db
from ._groups import QuantizerGroup
from ._state import GroupPrecisions
from ._types import MixedPrecisionConfig, ParetoPoint, SensitivityEntry

logger = logging.getLogger(__name__)


class _Search:
    def __init__(
        self,
        sim: QuantSim,
        config: MixedPrecisionConfig,
        groups: tuple[QuantizerGroup, ...],
        table: CostTable,
        precisions: GroupPrecisions,
        evaluator: _Evaluator,
        probe: _OutputProbe | None,
        progress: bool,
    ) -> None:
        self.sim = sim
        self.config = config
        self.groups = groups
        self.table = table
        self.precisions = precisions
        self.evaluate = evaluator
        self.probe = probe
        self.progress = progress
        self.metric = config.cost
        self.limit: float | None = None  # the most a config may cost (budget); None: no limit
        self.start: dict[str, Candidate] = {}  # the input's formats
        self._cache: dict[tuple[tuple[str, ...], int | None], float] = {}

    def accuracy(self, assignment: Mapping[str, Candidate], num_samples: int | None, phase: str) -> float:
        key = (tuple(assignment[g.name].name for g in self.groups), num_samples)
        if key not in self._cache:
            self.precisions.apply(assignment)
            self._cache[key] = self.evaluate(num_samples, phase)
        return self._cache[key]

    def fp32_accuracy(self) -> float:
        quantizers = list(self.sim.activation_quantizers.values()) + list(self.sim.param_quantizers.values())
        enabled = [q.enabled for q in quantizers]
        for q in quantizers:
            q.enabled = False
        try:
            return self.evaluate(self.config.num_samples_for_phase_2, "the FP32 evaluation (every quantizer disabled)")
        finally:
            for q, e in zip(quantizers, enabled):
                q.enabled = e

    def phase1(self, baseline: dict[str, Candidate]) -> list[SensitivityEntry]:
        pairs = []
        base_total = self.table.cost(baseline, self.metric)
        for g in self.groups:
            for c in self.table.candidates:
                cut = self.table.group_cost(g.name, baseline[g.name], self.metric) - self.table.group_cost(g.name, c, self.metric)
                if cut > 0:
                    pairs.append((g.name, c, cut / base_total))
        n1 = self.config.num_samples_for_phase_1
        if self.config.phase1_metric == "eval":
            reference = self.accuracy(baseline, n1, f"phase 1 (baseline {_describe(baseline)} on {n1 or 'all'} samples)")
            ref_outputs: list[Tensor] = []
        else:
            assert self.probe is not None
            self.precisions.apply(baseline)
            ref_outputs = self.probe("phase 1 (SQNR reference: the baseline)")
            reference = math.inf
        entries = []
        bar = tqdm(pairs, desc="AMP phase 1 (sensitivity)", unit="config", disable=None if self.progress else True)
        for group, cand, saved in bar:
            trial = dict(baseline)
            trial[group] = cand
            phase = f"phase 1 (sensitivity of group {group!r} at {cand.name})"
            if self.config.phase1_metric == "eval":
                score = self.accuracy(trial, n1, phase)
                sens = reference - score
            else:
                assert self.probe is not None
                self.precisions.apply(trial)
                sens = _noise_ratio(ref_outputs, self.probe(phase))
                score = _sqnr_db(sens)
            entries.append(SensitivityEntry(group, cand.name, score, sens, saved))
            logger.debug("AMP phase 1: %s at %s: score %.5g, sensitivity %.4g, saves %.4f", group, cand.name, score, sens, saved)
        bar.close()
        order = {g.name: i for i, g in enumerate(self.groups)}
        cand_order = {c.name: i for i, c in enumerate(self.table.candidates)}
        entries.sort(
            key=lambda e: (max(e.sensitivity, 0.0) / e.cost_saved, -e.cost_saved, order[e.group], cand_order[e.candidate])
        )
        return entries

    def moves(
        self, baseline: dict[str, Candidate], entries: Sequence[SensitivityEntry]
    ) -> list[tuple[dict[str, Candidate], str]]:
        """The prefix configs of phase 2 (strictly decreasing cost) with the move that made each."""
        current = dict(baseline)
        steps = []
        for e in entries:
            cand = parse_candidate(e.candidate)
            if self.table.group_cost(e.group, cand, self.metric) < self.table.group_cost(e.group, current[e.group], self.metric):
                current[e.group] = cand
                steps.append((dict(current), f"{e.group}={cand.name}"))
        return steps

    def phase2(
        self,
        baseline: dict[str, Candidate],
        steps: Sequence[tuple[dict[str, Candidate], str]],
        target: float,
        k_min: int = 0,
    ) -> tuple[int, dict[int, float]]:
        """The most moves whose config meets ``target`` (configs with fewer than ``k_min`` moves are over
        the budget and never chosen; when none meets it, ``k_min``: the most accurate within budget)."""
        n2 = self.config.num_samples_for_phase_2
        k_max = len(steps)
        scores: dict[int, float] = {}
        bar = tqdm(
            desc="AMP phase 2 (front)",
            unit="eval",
            total=k_max if self.config.phase2_search == "linear" else None,
            disable=None if self.progress else True,
        )

        def acc(k: int) -> float:
            if k not in scores:
                assignment = baseline if k == 0 else steps[k - 1][0]
                scores[k] = self.accuracy(
                    assignment, n2, f"phase 2 (config {k} of {k_max}: {steps[k - 1][1] if k else 'baseline'})"
                )
                bar.update(1)
                logger.info(
                    "AMP phase 2: %d/%d moves, relative %s %.4f, accuracy %.5g%s",
                    k,
                    k_max,
                    self.metric,
                    self.table.relative(assignment, self.metric),
                    scores[k],
                    "" if scores[k] >= target else " (below target)",
                )
            return scores[k]

        acc(0)
        if self.config.phase2_search == "linear":
            for k in range(1, k_max + 1):
                acc(k)
            meeting = [k for k, s in scores.items() if s >= target and k >= k_min]
            chosen = max(meeting, default=k_min)
        elif k_max == 0 or k_max <= k_min or acc(k_max) >= target:
            chosen = k_max
        elif acc(k_min) < target:
            chosen = k_min
        else:
            lo, hi = k_min, k_max
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if acc(mid) >= target:
                    lo = mid
                else:
                    hi = mid
            chosen = lo
        bar.close()
        return chosen, scores

    def refine(
        self,
        start: dict[str, Candidate],
        start_acc: float,
        lowered: tuple[str, ...],
        entries: Sequence[SensitivityEntry],
        target: float,
    ) -> tuple[dict[str, Candidate], float, list[ParetoPoint]]:
        """Try the (group, candidate) moves one at a time on top of ``start``; keep those that meet the target."""
        n2 = self.config.num_samples_for_phase_2
        current, current_acc, points = dict(start), start_acc, []
        budget = self.config.refine_evals
        bar = tqdm(desc="AMP refinement", unit="eval", total=budget, disable=None if self.progress else True)
        for e in entries:
            if budget <= 0:
                break
            cand = parse_candidate(e.candidate)
            if self.table.group_cost(e.group, cand, self.metric) >= self.table.group_cost(e.group, current[e.group], self.metric):
                continue
            trial = dict(current)
            trial[e.group] = cand
            calls = self.evaluate.calls
            acc = self.accuracy(trial, n2, f"the refinement (trying {e.group}={cand.name})")
            budget -= self.evaluate.calls - calls
            bar.update(self.evaluate.calls - calls)
            label = f"{e.group}={cand.name}"
            points.append(ParetoPoint(self.table.relative(trial, self.metric), acc, (*lowered, label)))
            kept = acc >= target
            logger.info(
                "AMP refinement: %s: relative %s %.4f, accuracy %.5g: %s",
                label,
                self.metric,
                points[-1].relative_cost,
                acc,
                "kept" if kept else "undone",
            )
            if kept:
                current, current_acc, lowered = trial, acc, (*lowered, label)
        bar.close()
        return current, current_acc, points


def _pareto(points: Sequence[ParetoPoint]) -> tuple[ParetoPoint, ...]:
    return tuple(reversed(pareto_front(points, key=lambda p: (p.relative_cost, p.accuracy))))
