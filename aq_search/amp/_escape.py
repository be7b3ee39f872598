"""The escape hatch: lift the few layers that hurt, within the cost budget, in a few evaluations.

:func:`apply_mixed_precision` starts from every group at its highest candidate and lowers groups one by
one; its phase 1 measures every (group, candidate) pair. When the budget keeps the result near the
requested precision (e.g. at most 1.5x the BOPs of all-W8A8, where all-W16A8 costs 2x), nearly every
group must end where the input already is, and that top-down walk spends most of its evaluations on
configs it can never return. :func:`lift_precision` goes the other way, from the input up:

1. **Sensitivity without the eval callback.** Each lift (a group, a candidate more precise than the
   group's input format) first gets a free estimate: the relative quantization noise of the group's
   weights (measured on the weights) and input activations (from the calibration histogram) that the
   lift removes, per unit of added cost. The ``screen`` best by that estimate (by default every lift
   within the budget, up to :data:`MAX_PROBED`) are then measured: lift only that group and measure the
   output noise (power of the difference from the model with every quantizer off, over its power) on a
   calibration batch. The gain of a lift is the output noise it removes; no eval call is spent. The free
   estimate ranks poorly on real models (EfficientNet-Lite0 W4A8: the ten it ranked best lifted the
   score from 0.14 to 0.20 with 1.03x the BOPs; measuring all 150 lifts, a forward pass of 8 samples
   each, reached 0.72 at the 1.5x budget with the same two evaluations), so it only orders the probes.
2. **Order.** Lifts go in order of gain per unit of added cost (BOPs or model size); a lift that would
   take the config over the budget is skipped, and so is one that, with the lifts kept before it, does
   not lower the measured output noise (lifts interact: errors of different layers partly cancel). The
   prefixes of that list are configs of increasing cost and falling measured noise, the last one the
   least noisy config found within the budget.
3. **A few evaluations.** The output noise along the prefixes (forward passes only) picks the shortest
   prefix that removes :data:`NOISE_SHARE` of the noise the longest one removes; that config is
   evaluated first. If it misses the target the longest prefix is evaluated; if that meets it, a
   bisection between them looks for a cheaper config that still meets it, while evaluations remain
   (``max_evals``). With ``first="longest"`` (AdaRound follows) only the longest prefix is evaluated.

Layers left at their input format keep their encodings exactly, AdaRound rounding included (see
:class:`~aq_search.amp._state.GroupPrecisions`). The result is never worse than the input when
``input_accuracy`` is given: the input is restored instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._errors import InvalidInputError
from ..quantsim import QuantSim
from ._candidates import Candidate, CandidateLike, parse_candidates
from ._cost import CostTable
from ._evaluate import _Evaluator, _noise_ratio, _OutputProbe, _sqnr_db
from ._groups import find_quantizer_groups
from ._limits import budget_limit, input_assignment
from ._state import GroupPrecisions
from ._types import EvalCallback, MixedPrecisionResult, ParetoPoint, SensitivityEntry

__all__ = ["MAX_PROBED", "NOISE_SHARE", "is_lift", "lift_precision", "lifts_pay"]

logger = logging.getLogger(__name__)

#: The first config evaluated is the shortest prefix removing this share of the removable output noise.
NOISE_SHARE = 0.8
#: Most lifts measured with an output probe by default (the best by the free estimate).
MAX_PROBED = 256


def _rank(fmt: tuple[int, str]) -> float:
    bits, dtype = fmt
    return float(bits) + (0.5 if dtype == "float" else 0.0)


def is_lift(candidate: Candidate, current: Candidate) -> bool:
    """Whether ``candidate`` is at least as precise as ``current`` in weights and activations, and more in one."""
    p, a = _rank(candidate.param_format), _rank(candidate.activation_format)
    p0, a0 = _rank(current.param_format), _rank(current.activation_format)
    return p >= p0 and a >= a0 and (p > p0 or a > a0)


def lifts_pay(sim: QuantSim, candidates: Sequence[CandidateLike], budget: tuple[CandidateLike, float] | None, cost: str) -> bool:
    """Whether lifting from the input is the cheaper way: the all-highest config is over the budget.

    Then most groups must stay at their input format, and measuring how much each one would lose from
    the top (the top-down AMP's phase 1) spends evaluations on configs that can never be returned.
    """
    if budget is None:
        return False
    parsed = parse_candidates(candidates, who="lifts_pay")
    groups = find_quantizer_groups(sim)
    if not groups:
        return False
    table = CostTable(sim, groups, parsed)
    limit = budget_limit(table, budget, cost)
    start = input_assignment(sim, groups)
    if limit is None or table.cost_of(start, cost) > limit:
        return False
    return table.cost(table.baseline(cost), cost) > limit


class _Lifter:
    """The state of one :func:`lift_precision` run (sim, groups, costs, probes)."""

    def __init__(self, sim: QuantSim, candidates: Sequence[Candidate], probe: _OutputProbe, cost: str) -> None:
        self.sim = sim
        self.groups = find_quantizer_groups(sim)
        if not self.groups:
            raise InvalidInputError("The sim has no weight layers (Conv/Linear/Embedding), so there is nothing to lift.")
        self.table = CostTable(sim, self.groups, candidates)
        self.precisions = GroupPrecisions(sim, self.groups)
        self.start = input_assignment(sim, self.groups)
        self.probe = probe
        self.cost = cost
        self.reference: list[Tensor] = []
        self.probes = 0

    def float_outputs(self) -> list[Tensor]:
        quantizers = list(self.sim.activation_quantizers.values()) + list(self.sim.param_quantizers.values())
        enabled = [q.enabled for q in quantizers]
        for q in quantizers:
            q.enabled = False
        try:
            return self.probe("the escape hatch's reference (every quantizer off)")
        finally:
            for q, e in zip(quantizers, enabled, strict=True):
                q.enabled = e

    def noise(self, assignment: Mapping[str, Candidate], what: str) -> float:
        self.precisions.apply(assignment)
        self.probes += 1
        return _noise_ratio(self.reference, self.probe(what))

    def total(self, assignment: Mapping[str, Candidate]) -> int:
        return self.table.cost_of(assignment, self.cost)


def lift_precision(
    sim: QuantSim,
    candidates: Sequence[CandidateLike],
    *,
    eval_callback: EvalCallback,
    target_accuracy: float,
    probe_fn: Callable[[nn.Module], Any],
    budget: tuple[CandidateLike, float] | None = None,
    cost: str = "bops",
    num_samples: int | None = None,
    max_evals: int = 3,
    screen: int | None = None,
    input_accuracy: float | None = None,
    fp32_accuracy: float | None = None,
    first: str = "share",
) -> MixedPrecisionResult:
    """Raise the precision of the groups whose quantization noise hurts most, within ``budget``.

    Args:
        sim: a calibrated sim at its input precision (AdaRound rounding is kept where a group stays).
        candidates: the formats a group may take (those more precise than a group's input are lifts).
        eval_callback: ``eval_callback(model, num_samples) -> float``, higher is better.
        target_accuracy: the score to reach.
        probe_fn: ``probe_fn(model)`` runs a few calibration batches (the sensitivity data).
        budget: ``(candidate, ratio)``: no config costs more than ``ratio`` x every group at ``candidate``.
        cost: ``"bops"`` or ``"size"``.
        num_samples: samples per evaluation (``None``: the full evaluation).
        max_evals: evaluations at most (at least 1).
        screen: lifts measured with an output probe, the best by the free noise estimate (at least 1;
            ``None``: every lift within the budget, at most :data:`MAX_PROBED`). Only measured lifts are made.
        input_accuracy: the input's score at the same fidelity, if known: a config scoring below it is
            not returned (the input is restored).
        fp32_accuracy: recorded in the result.
        first: the config evaluated first: ``"share"``, the shortest prefix removing :data:`NOISE_SHARE`
            of the removable output noise (then the longest if that misses, and a bisection between them
            if the longest meets); ``"longest"``, the least noisy config found within the budget, and only
            that one (one call: when it meets, it is within the budget and the trial stops; when it misses,
            it is what AdaRound gets). ``"longest"`` suits a stage that AdaRound follows: AdaRound re-rounds
            what stays low, so the config it gets should remove the most noise.

    Returns:
        A :class:`MixedPrecisionResult` whose config is applied to ``sim`` (``relative_bops`` relative to
        every group at its highest candidate, as :func:`apply_mixed_precision` reports it).
    """
    parsed = parse_candidates(candidates, who="lift_precision")
    if screen is None:
        screen = MAX_PROBED
    if first not in ("share", "longest"):
        raise InvalidInputError(f"The 'first' parameter of lift_precision must be 'share' or 'longest'. Got {first!r} instead.")
    for name, value in (("max_evals", max_evals), ("screen", screen)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"The '{name}' parameter of lift_precision must be an int >= 1. Got {value!r} instead.")
    lifter = _Lifter(sim, parsed, _OutputProbe(sim, probe_fn), cost)
    table, start, groups = lifter.table, lifter.start, lifter.groups
    limit = budget_limit(table, budget, cost)
    evaluator = _Evaluator(sim, eval_callback)
    try:
        lifter.reference = lifter.float_outputs()
        noise0 = lifter.noise(start, "the escape hatch's input")
        entries, moves = _rank_lifts(lifter, noise0, limit, screen)
        steps, noise = _prefixes(lifter, start, moves, limit, noise0)
        result = _choose(lifter, evaluator, steps, noise, target_accuracy, num_samples, max_evals, input_accuracy, first)
    except BaseException:
        lifter.precisions.restore()
        raise
    chosen, accuracy, evaluated, message = result
    lifter.precisions.restore()
    lifter.precisions.apply(chosen)
    base = table.cost(table.baseline("bops"), "bops")
    base_size = table.cost(table.baseline("size"), "size")
    lifted = sum(1 for g in groups if chosen[g.name] != start[g.name])
    logger.info("AMP (lift): %s (%d output probe(s), %d eval call(s))", message, lifter.probes, evaluator.calls)
    return MixedPrecisionResult(
        config={layer: chosen[g.name].name for g in groups for layer in g.layers},
        pareto=tuple(sorted({(p.relative_cost, p.accuracy): p for p in evaluated}.values(), reverse=True)),
        accuracy=accuracy,
        relative_bops=table.cost_of(chosen, "bops") / base if base else 0.0,
        relative_size=table.cost_of(chosen, "size") / base_size if base_size else 0.0,
        target_met=accuracy >= target_accuracy,
        message=f"{message} ({lifted} of {len(groups)} group(s) lifted, {evaluator.calls} eval call(s), "
        f"{lifter.probes} output probe(s)).",
        sensitivity=tuple(entries),
        groups=groups,
        n_eval_calls=evaluator.calls,
        fp32_accuracy=math.nan if fp32_accuracy is None else float(fp32_accuracy),
        target_accuracy=float(target_accuracy),
        baseline_accuracy=math.nan if input_accuracy is None else float(input_accuracy),
        cost=cost,
        group_config={g: c.name for g, c in chosen.items()},
        evaluated=tuple(evaluated),
        phase1_metric="sqnr",
    )


def _removed(relative_noise: float, current: tuple[int, str], lifted: tuple[int, str]) -> float:
    """The share of a tensor's relative rounding noise that a wider format removes (4x less per extra bit)."""
    if lifted[1] == "float":
        return relative_noise
    return relative_noise * (1.0 - 4.0 ** -max(0, lifted[0] - current[0]))


def _estimate(lifter: _Lifter, group: str, cand: Candidate) -> float:
    """Free estimate of a lift's gain: relative rounding noise of the group's weights and inputs it removes."""
    sim, start = lifter.sim, lifter.start[group]
    g = next(x for x in lifter.groups if x.name == group)
    total = 0.0
    with torch.no_grad():
        for layer in g.layers:
            q = sim.param_quantizer(layer)
            if not q.enabled or q.dtype != "int" or cand.param_format == start.param_format:
                continue
            w = sim.float_weight(layer).detach()
            power = float(w.double().square().sum())
            if power > 0:
                total += _removed(float((q(w) - w).double().square().sum()) / power, start.param_format, cand.param_format)
        if cand.activation_format != start.activation_format:
            for name in g.activation_quantizers:
                q = sim.activation_quantizers[name]
                stats = q.stats
                if not q.enabled or q.dtype != "int" or q.scale is None or stats is None or stats.hist is None:
                    continue
                counts = stats.hist
                power = float((counts * stats.centers().square()).sum() / counts.sum().clamp_min(1.0))
                if power > 0:
                    noise = float(q.scale.double().square().mean()) / 12.0
                    total += _removed(noise / power, start.activation_format, cand.activation_format)
    return total


def _rank_lifts(
    lifter: _Lifter, noise0: float, limit: float | None, screen: int
) -> tuple[list[SensitivityEntry], list[tuple[str, Candidate, float]]]:
    """Phase 1: the ``screen`` most promising lifts by the free estimate, each measured alone with an output
    probe; the moves ``(group, candidate, gain per cost)``, best first."""
    table, start = lifter.table, lifter.start
    base_total = lifter.total(start)
    options: list[tuple[float, str, Candidate, int]] = []
    for g in lifter.groups:
        here = table.cost_of({g.name: start[g.name]}, lifter.cost)
        for cand in table.candidates:
            added = table.group_cost(g.name, cand, lifter.cost) - here
            if not is_lift(cand, start[g.name]) or added <= 0:
                continue
            if limit is not None and base_total + added > limit:
                continue  # this lift alone is over the budget
            options.append((_estimate(lifter, g.name, cand) / added, g.name, cand, added))
    options.sort(key=lambda o: -o[0])
    entries: list[SensitivityEntry] = []
    moves: list[tuple[str, Candidate, float]] = []
    for _, group, cand, added in options[:screen]:
        trial = dict(start)
        trial[group] = cand
        noise = lifter.noise(trial, f"lifting group {group!r} to {cand.name}")
        lifter.precisions.set_group(group, start[group])
        gain = noise0 - noise
        entries.append(SensitivityEntry(group, cand.name, _sqnr_db(noise), gain, -added / base_total))
        if gain > 0:
            moves.append((group, cand, gain / added))
    logger.info(
        "AMP (lift): %d lift(s) within the budget, %d measured (the best by estimated noise removed)", len(options), len(entries)
    )
    moves.sort(key=lambda m: -m[2])
    entries.sort(key=lambda e: -e.sensitivity)
    return entries, moves


def _prefixes(
    lifter: _Lifter,
    start: Mapping[str, Candidate],
    moves: Sequence[tuple[str, Candidate, float]],
    limit: float | None,
    noise0: float,
) -> tuple[list[tuple[dict[str, Candidate], str]], dict[int, float]]:
    """Phase 2's configs: the moves applied one after another, each raising its group's cost, within budget,
    and each kept only when it lowers the output noise measured with the moves kept before it.

    Lifts interact: quantization errors of different layers partly cancel, so two lifts that each remove
    noise alone can add noise together (digits W4A4 per-tensor: lifting ``features.0`` alone took the
    output noise from 0.119 to 0.080, ``features.3`` alone to 0.093, both to 0.159, noisier than the input).
    Measuring each prefix (one output probe per move) keeps the prefixes' noise falling, so the longest
    prefix is the least noisy config found and the bisection on noise is sound. Returns the configs and
    their measured noise, by prefix length (``0``: the input).
    """
    current = dict(start)
    steps: list[tuple[dict[str, Candidate], str]] = []
    noise = {0: noise0}
    for group, cand, _ in moves:
        if lifter.table.group_cost(group, cand, lifter.cost) <= lifter.table.cost_of({group: current[group]}, lifter.cost):
            continue
        trial = dict(current)
        trial[group] = cand
        if limit is not None and lifter.total(trial) > limit:
            continue
        measured = lifter.noise(trial, f"lifting {group!r} to {cand.name} after {len(steps)} lift(s)")
        if not measured < noise[len(steps)]:
            continue  # with the lifts kept so far, this one adds output noise (or removes none)
        current = trial
        steps.append((dict(current), f"{group}={cand.name}"))
        noise[len(steps)] = measured
    return steps, noise


def _choose(
    lifter: _Lifter,
    evaluator: _Evaluator,
    steps: Sequence[tuple[dict[str, Candidate], str]],
    noise: Mapping[int, float],
    target: float,
    num_samples: int | None,
    max_evals: int,
    input_accuracy: float | None,
    first_choice: str = "share",
) -> tuple[dict[str, Candidate], float, list[ParetoPoint], str]:
    start = lifter.start
    base = lifter.table.cost(lifter.table.baseline(lifter.cost), lifter.cost)
    if not steps:
        acc = input_accuracy if input_accuracy is not None else evaluator(num_samples, "the escape hatch's input")
        return dict(start), acc, [ParetoPoint(lifter.total(start) / base, acc, ())], "no lift lowers the output noise"
    k_max = len(steps)
    share = noise[0] - NOISE_SHARE * (noise[0] - noise[k_max])
    share_k = min(k for k in range(1, k_max + 1) if noise[k] <= share)  # the prefixes' noise falls (see _prefixes)
    scores: dict[int, float] = {}
    evaluated: list[ParetoPoint] = []

    def score(k: int) -> float:
        if k not in scores:
            lifter.precisions.apply(steps[k - 1][0])
            scores[k] = evaluator(num_samples, f"the escape hatch ({k} of {k_max} lift(s))")
            evaluated.append(ParetoPoint(lifter.total(steps[k - 1][0]) / base, scores[k], tuple(label for _, label in steps[:k])))
            logger.info("AMP (lift): %d lift(s): accuracy %.5g (target %.5g)", k, scores[k], target)
        return scores[k]

    if first_choice == "longest":  # the least noisy config, met or not: AdaRound follows (one call)
        score(k_max)
        bisect = False
    else:
        bisect = score(share_k) < target and share_k < k_max and len(scores) < max_evals and score(k_max) >= target
    if bisect:
        lo, hi = share_k, k_max
        # the longest prefix meets the target: bisect for a cheaper config that still meets it
        while hi - lo > 1 and len(scores) < max_evals:
            mid = (lo + hi) // 2
            if score(mid) >= target:
                hi = mid
            else:
                lo = mid
    meeting = [k for k, s in scores.items() if s >= target]
    chosen = min(meeting) if meeting else max(scores, key=lambda k: (scores[k], -k))
    accuracy = scores[chosen]
    if input_accuracy is not None and accuracy < input_accuracy:
        return (
            dict(start),
            float(input_accuracy),
            evaluated,
            (f"Kept the input: the best lift scored {accuracy:.4f}, below the input's {input_accuracy:.4f}"),
        )
    verdict = "met" if accuracy >= target else "missed"
    return (
        dict(steps[chosen - 1][0]),
        accuracy,
        evaluated,
        f"{verdict} the target {target:.4f} with {chosen} lift(s): accuracy {accuracy:.4f}",
    )
