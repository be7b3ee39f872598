"""Automatic mixed precision (AMP): a bit-width per quantizer group, on an accuracy-vs-cost Pareto front.

The algorithm (AIMET's greedy AMP, with any set of candidates):

1. Baseline: every quantizer group at its highest-cost candidate. If even that misses the target
   (FP32 accuracy minus the allowed drop), the baseline is returned with ``target_met=False``.
2. Phase 1, sensitivity: for each group and each cheaper candidate, lower only that group and
   measure the damage cheaply: the eval callback on ``num_samples_for_phase_1`` samples (accuracy
   drop from the baseline), or the SQNR of the model outputs on the calibration data (noise power
   over signal power, relative to the baseline outputs).
3. Phase 2, the front: sort the (group, candidate) moves by sensitivity per unit of cost saved
   (least harmful per BOP first; negative accuracy drops count as 0, ties go to the bigger saving)
   and apply them one after another, skipping a move that would not lower its group's cost. The
   prefixes form a sequence of configs of strictly decreasing cost. A binary search with the
   eval callback finds the longest prefix that meets the target (``phase2_search="linear"``
   evaluates every prefix instead, for a complete front).
4. Optional refinement (``refine_evals > 0``): the accuracy along the prefixes is not always
   monotone (one harmful move can hide cheap harmless ones after it), so the moves after the chosen
   prefix are tried one at a time on top of it, in phase-1 order, each kept if the target still
   holds, for at most ``refine_evals`` more eval calls.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree
from tqdm.auto import tqdm

from .._data import feed_batch
from .._errors import AQSearchError, CalibrationError, EncodingsNotComputedError, EvalCallbackError, InvalidInputError
from ..quantsim import QuantSim
from ..techniques._config import TechniqueConfig
from ._candidates import Candidate, CandidateLike, parse_candidate, parse_candidates
from ._cost import COST_METRICS, CostTable
from ._groups import QuantizerGroup, find_quantizer_groups, format_groups, ungrouped_activation_quantizers
from ._limits import budget_limit, first_within, input_assignment, kept_input
from ._state import GroupPrecisions

__all__ = [
    "PHASE1_METRICS",
    "PHASE2_SEARCHES",
    "EvalCallback",
    "MixedPrecisionConfig",
    "MixedPrecisionResult",
    "ParetoPoint",
    "SensitivityEntry",
    "apply_mixed_precision",
    "choose_mixed_precision",
    "set_mixed_precision",
]

logger = logging.getLogger(__name__)

#: ``eval_callback(model, num_samples) -> float``, higher is better; ``num_samples=None``: the full set.
EvalCallback = Callable[[nn.Module, "int | None"], Any]
PHASE1_METRICS = ("eval", "sqnr")
PHASE2_SEARCHES = ("binary", "linear")


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
            model outputs on ``forward_fn``'s data; no eval calls in phase 1).
        phase2_search: ``"binary"`` (about log2(moves) eval calls) or ``"linear"`` (every prefix:
            a complete front).
        refine_evals: eval calls allowed for the refinement after phase 2 (0: none, as AIMET).

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

    def __post_init__(self) -> None:
        parsed = parse_candidates(self.candidates, who=type(self).__name__)
        object.__setattr__(self, "candidates", tuple(c.name for c in parsed))
        self._check_int("num_samples_for_phase_1", 1, optional=True)
        self._check_int("num_samples_for_phase_2", 1, optional=True)
        self._check_int("refine_evals", 0)
        for name, allowed in (("cost", COST_METRICS), ("phase1_metric", PHASE1_METRICS), ("phase2_search", PHASE2_SEARCHES)):
            if getattr(self, name) not in allowed:
                raise self._fail(name, f"one of {list(allowed)}", getattr(self, name))

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
class MixedPrecisionResult:
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
    pareto: tuple[ParetoPoint, ...]
    accuracy: float
    relative_bops: float
    relative_size: float
    target_met: bool
    message: str
    sensitivity: tuple[SensitivityEntry, ...]
    groups: tuple[QuantizerGroup, ...]
    n_eval_calls: int
    fp32_accuracy: float
    target_accuracy: float
    baseline_accuracy: float
    cost: str
    group_config: Mapping[str, str]
    evaluated: tuple[ParetoPoint, ...]
    phase1_metric: str = "eval"

    @property
    def relative_cost(self) -> float:
        """The chosen config's cost in the metric that was minimized."""
        return self.relative_bops if self.cost == "bops" else self.relative_size

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


# -- evaluation -----------------------------------------------------------------------------------------
def _callable_name(fn: object) -> str:
    name = str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__)
    return name.rsplit(".<locals>.", 1)[-1]


class _Evaluator:
    """Calls the user's eval callback in eval mode without gradients; checks and counts the results."""

    def __init__(self, sim: QuantSim, callback: EvalCallback) -> None:
        self.sim = sim
        self.callback = callback
        self.name = _callable_name(callback)
        self.calls = 0

    def __call__(self, num_samples: int | None, phase: str) -> float:
        model = self.sim.model
        training = model.training
        model.eval()
        try:
            with torch.no_grad():
                value = self.callback(model, num_samples)
        except Exception as err:
            raise EvalCallbackError(
                f"The eval_callback {self.name!r} raised {type(err).__name__}: {err} during {phase}. It is called as "
                "eval_callback(model, num_samples) and must return a number, higher is better."
            ) from err
        finally:
            model.train(training)
        self.calls += 1
        return _score(value, self.name, phase)


def _score(value: object, name: str, phase: str) -> float:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        score = float(value)
        if math.isfinite(score):
            return score
    shown = repr(value) if isinstance(value, (numbers.Number, str, type(None))) else f"a {type(value).__name__}"
    raise EvalCallbackError(
        f"The eval_callback {name!r} returned {shown} during {phase}. It must return a finite number, higher is "
        "better (e.g. top-1 accuracy in [0, 1])."
    )


def _as_forward(forward_fn: Any) -> Callable[[nn.Module], None]:
    if callable(forward_fn):
        fn = forward_fn

        def run(model: nn.Module) -> None:
            fn(model)

        return run
    if isinstance(forward_fn, Iterable) and not isinstance(forward_fn, (str, bytes, Tensor)):
        batches = forward_fn

        def run_batches(model: nn.Module) -> None:
            for batch in batches:
                feed_batch(model, batch)

        return run_batches
    raise InvalidInputError(
        "The 'forward_fn' parameter of choose_mixed_precision must be a callable forward_fn(model) that runs "
        f"calibration batches through the model, or a re-iterable of batches. Got a {type(forward_fn).__name__} instead."
    )


class _OutputProbe:
    """Runs ``forward_fn`` and collects the model's float outputs (for the SQNR metric)."""

    def __init__(self, sim: QuantSim, forward_fn: Any) -> None:
        self.sim = sim
        self.run_fn = _as_forward(forward_fn)

    def __call__(self, phase: str) -> list[Tensor]:
        outputs: list[Tensor] = []

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            outputs.extend(
                t.detach().float() for t in pytree.tree_leaves(output) if isinstance(t, Tensor) and t.is_floating_point()
            )

        model = self.sim.model
        handle = model.register_forward_hook(hook)
        training = model.training
        model.eval()
        try:
            with torch.no_grad():
                self.run_fn(model)
        except Exception as err:
            raise CalibrationError(f"forward_fn raised {type(err).__name__}: {err} during {phase}.") from err
        finally:
            handle.remove()
            model.train(training)
        if not outputs:
            raise CalibrationError(
                f"forward_fn ran no batch through the model during {phase}: it must call the model it is given, "
                "e.g. `lambda model: [model(x) for x in calibration_batches]`."
            )
        return outputs


def _noise_ratio(reference: Sequence[Tensor], outputs: Sequence[Tensor]) -> float:
    if len(reference) != len(outputs):
        raise CalibrationError(
            "forward_fn ran a different number of batches from one call to the next; it must be deterministic."
        )
    noise = sum(float((o - r).pow(2).sum()) for r, o in zip(reference, outputs))
    signal = sum(float(r.pow(2).sum()) for r in reference)
    return noise / signal if signal > 0 else (0.0 if noise == 0 else math.inf)


def _sqnr_db(ratio: float) -> float:
    return math.inf if ratio == 0 else -10.0 * math.log10(ratio) if math.isfinite(ratio) else -math.inf


# -- the search -----------------------------------------------------------------------------------------
def _check_number(value: object, name: str, who: str, *, minimum: float | None = None) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok and minimum is not None:
        ok = float(value) >= minimum  # type: ignore[arg-type]
    if not ok:
        must = "a finite number" + (f" >= {minimum}" if minimum is not None else "")
        raise InvalidInputError(f"The '{name}' parameter of {who} must be {must}. Got {value!r} instead.")
    return float(value)  # type: ignore[arg-type]


def _has_encodings(sim: QuantSim) -> bool:
    quantizers = list(sim.activation_quantizers.values()) + list(sim.param_quantizers.values())
    return any(q.enabled and q.dtype == "int" and q.scale is not None for q in quantizers)


def _describe(assignment: Mapping[str, Candidate]) -> str:
    names = {c.name for c in assignment.values()}
    return f"all-{names.pop()}" if len(names) == 1 else "all-highest"


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
    front: list[ParetoPoint] = []
    best = -math.inf
    for p in sorted(points, key=lambda p: (p.relative_cost, -p.accuracy)):
        if p.accuracy > best:
            front.append(p)
            best = p.accuracy
    return tuple(reversed(front))


def apply_mixed_precision(
    sim: QuantSim,
    config: MixedPrecisionConfig,
    *,
    eval_callback: EvalCallback,
    allowed_accuracy_drop: float,
    forward_fn: Any = None,
    fp32_accuracy: float | None = None,
    progress: bool = True,
    budget: tuple[CandidateLike, float] | None = None,
    input_accuracy: float | None = None,
) -> MixedPrecisionResult:
    """Choose a candidate per quantizer group (see :func:`choose_mixed_precision`) and apply it to ``sim``.

    The technique's entry point for pipelines: the settings come as a :class:`MixedPrecisionConfig`.

    Args:
        budget: ``(candidate, ratio)``: no config costing more than ``ratio`` x the BOPs (or size, per
            ``config.cost``) of every group at ``candidate`` is chosen (e.g. ``("w4a8", 1.5)``).
        input_accuracy: the input sim's score at phase-2 fidelity, if known. When given, AMP never
            returns a config scoring below it: the input is restored instead (its AdaRound rounding
            included), and the result says so.
    """
    who = "apply_mixed_precision"
    if not isinstance(sim, QuantSim):
        raise InvalidInputError(f"The 'sim' parameter of {who} must be a QuantSim. Got a {type(sim).__name__} instead.")
    if not isinstance(config, MixedPrecisionConfig):
        raise InvalidInputError(
            f"The 'config' parameter of {who} must be a MixedPrecisionConfig. Got a {type(config).__name__} instead."
        )
    if not callable(eval_callback):
        raise InvalidInputError(
            f"The 'eval_callback' parameter of {who} must be a callable eval_callback(model, num_samples) -> float. "
            f"Got a {type(eval_callback).__name__} instead."
        )
    drop = _check_number(allowed_accuracy_drop, "allowed_accuracy_drop", who, minimum=0.0)
    fp32 = None if fp32_accuracy is None else _check_number(fp32_accuracy, "fp32_accuracy", who)
    if config.phase1_metric == "sqnr" and forward_fn is None:
        raise InvalidInputError(
            f"The 'forward_fn' parameter of {who} must be a callable forward_fn(model) running calibration batches when "
            "phase1_metric='sqnr' (the SQNR is measured on its outputs). Got None instead."
        )
    probe = _OutputProbe(sim, forward_fn) if config.phase1_metric == "sqnr" else None
    if not _has_encodings(sim):
        if forward_fn is None:
            raise EncodingsNotComputedError(
                "Mixed precision needs a calibrated sim: call sim.compute_encodings(forward_fn) first, or pass forward_fn=."
            )
        logger.info("AMP: the sim has no encodings; calibrating it with forward_fn")
        sim.compute_encodings(_as_forward(forward_fn))
    candidates = config.parsed_candidates
    groups = find_quantizer_groups(sim)
    if not groups:
        raise InvalidInputError(
            "The sim has no weight layers (Conv/Linear/Embedding), so there is nothing to assign bit-widths to."
        )
    table = CostTable(sim, groups, candidates)
    logger.info(
        "AMP: %d quantizer group(s) over %d weight layer(s)\n%s", len(groups), len(sim.quantized_layers), format_groups(groups)
    )
    free = ungrouped_activation_quantizers(sim, groups)
    if free:
        logger.info("AMP: %d activation quantizer(s) feed no weight layer and keep their format: %s", len(free), ", ".join(free))
    precisions = GroupPrecisions(sim, groups)
    precisions.check_statistics(candidates)
    rounded = [layer for g in groups for layer in g.layers if precisions.had_rounding(layer)]
    if rounded:
        logger.info(
            "AMP: %d layer(s) have AdaRound rounding, valid only at their bit-width; layers at another bit-width "
            "use round-to-nearest, layers back at their original bit-width get their AdaRound rounding back",
            len(rounded),
        )
    evaluator = _Evaluator(sim, eval_callback)
    search = _Search(sim, config, groups, table, precisions, evaluator, probe, progress)
    search.limit = budget_limit(table, budget, config.cost)
    search.start = input_assignment(sim, groups)
    try:
        result = _run(search, drop, fp32)
        if input_accuracy is not None and result.accuracy < input_accuracy:
            result = kept_input(search, result, float(input_accuracy))
            logger.info("AMP: %s", result.message)
    except BaseException:
        precisions.restore()
        raise
    dropped = [layer for layer in rounded if sim.param_quantizer(layer).rounding is None]
    if dropped:
        logger.warning(
            "AMP: the AdaRound rounding of %d layer(s) was dropped because their weight bit-width changed "
            "(rerun AdaRound at the new bit-widths to recover it): %s",
            len(dropped),
            ", ".join(f"{layer} ({result.config[layer]})" for layer in dropped),
        )
    elif rounded:
        logger.info("AMP: every AdaRound rounding was kept (those layers kept their weight bit-width)")
    return result


def _run(search: _Search, drop: float, fp32: float | None) -> MixedPrecisionResult:
    table, metric, config = search.table, search.metric, search.config
    if fp32 is None:
        fp32 = search.fp32_accuracy()
        logger.info("AMP: FP32 accuracy %.5g", fp32)
    target = fp32 - drop
    baseline = table.baseline(metric)
    base_name = _describe(baseline)
    base_acc = search.accuracy(baseline, config.num_samples_for_phase_2, f"the baseline evaluation ({base_name})")
    logger.info("AMP: baseline %s accuracy %.5g, target %.5g (FP32 %.5g - %.5g)", base_name, base_acc, target, fp32, drop)
    base_point = ParetoPoint(1.0, base_acc, ())

    def finish(
        assignment: dict[str, Candidate],
        accuracy: float,
        sensitivity: Sequence[SensitivityEntry],
        evaluated: Sequence[ParetoPoint],
        message: str,
    ) -> MixedPrecisionResult:
        search.precisions.apply(assignment)
        layer_config = {layer: assignment[g.name].name for g in search.groups for layer in g.layers}
        result = MixedPrecisionResult(
            config=layer_config,
            pareto=_pareto(evaluated),
            accuracy=accuracy,
            relative_bops=table.relative(assignment, "bops"),
            relative_size=table.relative(assignment, "size"),
            target_met=accuracy >= target,
            message=message,
            sensitivity=tuple(sensitivity),
            groups=search.groups,
            n_eval_calls=search.evaluate.calls,
            fp32_accuracy=fp32,
            target_accuracy=target,
            baseline_accuracy=base_acc,
            cost=metric,
            group_config={g: c.name for g, c in assignment.items()},
            evaluated=tuple(evaluated),
            phase1_metric=config.phase1_metric,
        )
        logger.info("AMP: %s", message)
        return result

    over = search.limit is not None and table.cost(baseline, metric) > search.limit
    if base_acc < target and not over:
        message = (
            f"The target accuracy {target:.4f} (FP32 {fp32:.4f} - allowed drop {drop:.4g}) cannot be met even with every "
            f"group at its highest candidate ({base_name} scores {base_acc:.4f}); returning that config. Add a higher "
            "candidate (e.g. 'w8a16' or 'fp16'), allow a larger drop, or improve the quantization first (BN folding, "
            "CLE, AdaRound)."
        )
        return finish(baseline, base_acc, (), [base_point], message)
    sensitivity = search.phase1(baseline)
    steps = search.moves(baseline, sensitivity)
    k_min = first_within(table, baseline, steps, search.limit, metric)
    chosen, scores = search.phase2(baseline, steps, target, k_min)
    evaluated = [
        ParetoPoint(
            table.relative(baseline if k == 0 else steps[k - 1][0], metric),
            s,
            tuple(label for _, label in steps[:k]),
        )
        for k, s in sorted(scores.items())
    ]
    assignment = baseline if chosen == 0 else steps[chosen - 1][0]
    accuracy = scores[chosen]
    if config.refine_evals > 0 and steps:
        prefix = tuple(label for _, label in steps[:chosen])
        assignment, accuracy, extra = search.refine(assignment, accuracy, prefix, sensitivity, target)
        evaluated += extra
    lowered = sum(1 for g, c in assignment.items() if c != baseline[g])
    what = "BOPs" if metric == "bops" else "model size"
    if accuracy < target:
        message = (
            f"Missed the target {target:.4f} (FP32 {fp32:.4f} - {drop:.4g}): the most accurate config within the cost "
            f"budget scores {accuracy:.4f} at {table.relative(assignment, metric):.3f}x the {what} of the {base_name} "
            f"config ({lowered} of {len(search.groups)} group(s) lowered, {search.evaluate.calls} eval call(s))."
        )
    elif not steps:
        message = (
            f"No group has a candidate cheaper than its highest, so nothing was lowered; {base_name} scores "
            f"{base_acc:.4f} (target {target:.4f})."
        )
    else:
        message = (
            f"Met the target {target:.4f} (FP32 {fp32:.4f} - {drop:.4g}) with accuracy {accuracy:.4f} at "
            f"{table.relative(assignment, metric):.3f}x the {what} of the {base_name} config: {lowered} of "
            f"{len(search.groups)} group(s) lowered, {search.evaluate.calls} eval call(s)."
        )
    return finish(assignment, accuracy, sensitivity, evaluated, message)


def choose_mixed_precision(
    sim: QuantSim,
    candidates: Sequence[CandidateLike],
    eval_callback: EvalCallback,
    allowed_accuracy_drop: float,
    *,
    forward_fn: Any = None,
    num_samples_for_phase_1: int | None = 128,
    num_samples_for_phase_2: int | None = None,
    cost: str = "bops",
    fp32_accuracy: float | None = None,
    phase1_metric: str = "eval",
    phase2_search: str = "binary",
    refine_evals: int = 0,
    progress: bool = True,
    config: MixedPrecisionConfig | None = None,
) -> MixedPrecisionResult:
    """Choose a bit-width candidate per quantizer group: the cheapest config found that meets the target.

    The target is ``fp32_accuracy - allowed_accuracy_drop``. The sim must be calibrated (or
    ``forward_fn`` given, to calibrate it); the chosen config is applied to it. If something
    fails (the eval callback raises ...), the sim is put back as it was.

    Args:
        sim: a calibrated :class:`~aq_search.QuantSim` (AdaRound results are kept where a layer
            keeps its weight bit-width).
        candidates: two or more of ``"w<param bits>a<activation bits>"``, ``"fp16"``, ``"fp32"``,
            or AIMET tuples ``((activation bits, dtype), (param bits, dtype))``. Any set works: the
            baseline is each group's highest-cost candidate.
        eval_callback: ``eval_callback(model, num_samples) -> float``, higher is better.
        allowed_accuracy_drop: in the eval callback's units.
        forward_fn: ``forward_fn(model)`` running calibration batches (or a list of batches): calibrates
            an uncalibrated sim, and is the data of ``phase1_metric="sqnr"``.
        num_samples_for_phase_1 / num_samples_for_phase_2: ``num_samples`` passed to the callback.
        cost: ``"bops"`` (bit operations) or ``"size"`` (bits of weights).
        fp32_accuracy: the FP32 score; when ``None`` the sim is evaluated with every quantizer off.
        phase1_metric: ``"eval"`` or ``"sqnr"``.
        phase2_search: ``"binary"`` or ``"linear"`` (every prefix evaluated).
        refine_evals: after phase 2, try the remaining moves one at a time (each kept if the target
            still holds) for at most this many more eval calls; 0 (the default) skips it.
        progress: show tqdm progress bars (only on a terminal).
        config: a :class:`MixedPrecisionConfig` holding the algorithm settings instead of the keywords
            above (``candidates`` must then list the same candidates; a keyword set to something
            other than its default and the config's value is an error).

    Returns:
        A :class:`MixedPrecisionResult`. When the target cannot be met even at the highest
        candidates, the baseline config is applied and returned with ``target_met=False``.

    Raises:
        InvalidInputError: fewer than two candidates, a malformed candidate, a bad argument.
        EvalCallbackError: the eval callback raised or returned something that is not a finite number.

    Example:
        >>> result = choose_mixed_precision(sim, ["w8a8", "w4a8"], eval_fn, 0.01)  # doctest: +SKIP
        >>> result.config, result.relative_bops, result.target_met  # doctest: +SKIP
    """
    parsed = parse_candidates(candidates, who="choose_mixed_precision")
    settings: dict[str, Any] = {
        "num_samples_for_phase_1": num_samples_for_phase_1,
        "num_samples_for_phase_2": num_samples_for_phase_2,
        "cost": cost,
        "phase1_metric": phase1_metric,
        "phase2_search": phase2_search,
        "refine_evals": refine_evals,
    }
    if config is None:
        config = MixedPrecisionConfig(candidates=tuple(c.name for c in parsed), **settings)
    else:
        _check_against_config(config, parsed, settings)
    return apply_mixed_precision(
        sim,
        config,
        eval_callback=eval_callback,
        allowed_accuracy_drop=allowed_accuracy_drop,
        forward_fn=forward_fn,
        fp32_accuracy=fp32_accuracy,
        progress=progress,
    )


def _check_against_config(config: object, parsed: Sequence[Candidate], settings: Mapping[str, Any]) -> None:
    who = "choose_mixed_precision"
    if not isinstance(config, MixedPrecisionConfig):
        raise InvalidInputError(
            f"The 'config' parameter of {who} must be a MixedPrecisionConfig or None. Got a {type(config).__name__} instead."
        )
    if tuple(c.name for c in parsed) != config.candidates:
        raise InvalidInputError(
            f"The 'candidates' parameter of {who} must match config.candidates {list(config.candidates)} when a config is "
            f"given. Got {[c.name for c in parsed]} instead."
        )
    defaults = {f.name: f.default for f in dataclasses.fields(MixedPrecisionConfig)}
    for name, value in settings.items():
        if value != defaults[name] and value != getattr(config, name):
            raise InvalidInputError(
                f"The '{name}' parameter of {who} ({value!r}) contradicts the config ({getattr(config, name)!r}); "
                "pass the setting in one place."
            )


def set_mixed_precision(sim: QuantSim, config: Mapping[str, CandidateLike]) -> None:
    """Apply a mixed-precision config ``{weight layer name: candidate}`` (e.g. ``result.config``) to a sim.

    Replays a result on a fresh sim (calibrated, same model). Layers of one quantizer group must
    get the same candidate; groups with no layer named keep their format.

    Raises:
        InvalidInputError: an unknown layer, a malformed candidate, or one group given two candidates.
    """
    if not isinstance(sim, QuantSim):
        raise InvalidInputError(
            f"The 'sim' parameter of set_mixed_precision must be a QuantSim. Got a {type(sim).__name__} instead."
        )
    if not isinstance(config, Mapping):
        raise InvalidInputError(
            "The 'config' parameter of set_mixed_precision must be a mapping {layer name: candidate}. "
            f"Got a {type(config).__name__} instead."
        )
    groups = find_quantizer_groups(sim)
    known = {layer for g in groups for layer in g.layers}
    unknown = [name for name in config if name not in known]
    if unknown:
        raise InvalidInputError(
            f"set_mixed_precision: {unknown[:5]} {'are' if len(unknown) > 1 else 'is'} not a quantized layer of the sim. "
            f"Names are sim.quantized_layers: {sorted(known)[:10]}"
        )
    parsed = {name: parse_candidate(c) for name, c in config.items()}
    assignment: dict[str, Candidate] = {}
    for g in groups:
        given = {layer: parsed[layer] for layer in g.layers if layer in parsed}
        if len(set(given.values())) > 1:
            shown = ", ".join(f"{layer}={c.name}" for layer, c in given.items())
            raise InvalidInputError(
                f"set_mixed_precision: layers of quantizer group {g.name!r} must share one candidate (they share "
                f"activation quantizers). Got {shown}."
            )
        if given:
            assignment[g.name] = next(iter(given.values()))
    precisions = GroupPrecisions(sim, groups)
    precisions.check_statistics(list(set(assignment.values())))
    try:
        precisions.apply(assignment)
    except AQSearchError:
        precisions.restore()
        raise
