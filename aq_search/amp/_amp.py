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
from collections.abc import Mapping, Sequence
from typing import Any

from .._compat import UNSET, renamed_parameter
from .._constraints import parameter_error
from .._errors import AQSearchError, EncodingsNotComputedError, InvalidInputError
from ..quantsim import QuantSim
from ..quantsim._calibrate import calibration_runner
from ._candidates import Candidate, CandidateLike, parse_candidate, parse_candidates
from ._cost import CostTable
from ._evaluate import _check_number, _describe, _Evaluator, _has_encodings, _OutputProbe
from ._groups import find_quantizer_groups, format_groups, ungrouped_activation_quantizers
from ._limits import budget_limit, first_within, input_assignment, kept_input
from ._search import _pareto, _Search
from ._state import GroupPrecisions
from ._types import EvalCallback, MixedPrecisionConfig, MixedPrecisionResult, ParetoPoint, SensitivityEntry

__all__ = ["apply_mixed_precision", "choose_mixed_precision", "set_mixed_precision"]

logger = logging.getLogger(__name__)


def apply_mixed_precision(
    sim: QuantSim,
    config: MixedPrecisionConfig,
    *,
    eval_callback: EvalCallback,
    allowed_accuracy_drop: float,
    forward_pass_callback: Any = None,
    fp32_accuracy: float | None = None,
    progress: bool = True,
    budget: tuple[CandidateLike, float] | None = None,
    input_accuracy: float | None = None,
    forward_fn: Any = UNSET,
) -> MixedPrecisionResult:
    """Choose a candidate per quantizer group (see :func:`choose_mixed_precision`) and apply it to ``sim``.

    The technique's entry point for pipelines: the settings come as a :class:`MixedPrecisionConfig`.

    Args:
        budget: ``(candidate, ratio)``: no config costing more than ``ratio`` x the BOPs (or size, per
            ``config.cost``) of every group at ``candidate`` is chosen (e.g. ``("w4a8", 1.5)``).
        input_accuracy: the input sim's score at phase-2 fidelity, if known. When given, AMP never
            returns a config scoring below it: the input is restored instead (its AdaRound rounding
            included), and the result says so.
        forward_fn: deprecated name of ``forward_pass_callback`` (warns; will be removed).
    """
    who = "apply_mixed_precision"
    callback = renamed_parameter(who, "forward_fn", "forward_pass_callback", forward_fn, forward_pass_callback)
    run_fn = None if callback is None else calibration_runner(callback, who=who)
    if not isinstance(sim, QuantSim):
        raise parameter_error("sim", who, "a QuantSim", sim)
    if not isinstance(config, MixedPrecisionConfig):
        raise parameter_error("config", who, "a MixedPrecisionConfig", config)
    if not callable(eval_callback):
        raise parameter_error("eval_callback", who, "a callable eval_callback(model, num_samples) -> float", eval_callback)
    drop = _check_number(allowed_accuracy_drop, "allowed_accuracy_drop", who, minimum=0.0)
    fp32 = None if fp32_accuracy is None else _check_number(fp32_accuracy, "fp32_accuracy", who)
    if config.phase1_metric == "sqnr" and run_fn is None:
        raise parameter_error(
            "forward_pass_callback",
            who,
            "a callable forward_pass_callback(model) running calibration batches when phase1_metric='sqnr' "
            "(the SQNR is measured on its outputs)",
            None,
        )
    probe = _OutputProbe(sim, run_fn) if run_fn is not None and config.phase1_metric == "sqnr" else None
    if not _has_encodings(sim):
        if run_fn is None:
            raise EncodingsNotComputedError(
                "Mixed precision needs a calibrated sim: call sim.compute_encodings(calibration_batches) first, "
                "or pass forward_pass_callback=."
            )
        logger.info("AMP: the sim has no encodings; calibrating it with forward_pass_callback")
        sim.compute_encodings(run_fn)
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
    forward_pass_callback: Any = None,
    num_samples_for_phase_1: int | None = 128,
    num_samples_for_phase_2: int | None = None,
    cost: str = "bops",
    fp32_accuracy: float | None = None,
    phase1_metric: str = "eval",
    phase2_search: str = "binary",
    refine_evals: int = 0,
    progress: bool = True,
    config: MixedPrecisionConfig | None = None,
    forward_fn: Any = UNSET,
) -> MixedPrecisionResult:
    """Choose a bit-width candidate per quantizer group: the cheapest config found that meets the target.

    The target is ``fp32_accuracy - allowed_accuracy_drop``. The sim must be calibrated (or
    ``forward_pass_callback`` given, to calibrate it); the chosen config is applied to it. If something
    fails (the eval callback raises ...), the sim is put back as it was.

    Args:
        sim: a calibrated :class:`~aq_search.QuantSim` (AdaRound results are kept where a layer
            keeps its weight bit-width).
        candidates: two or more of ``"w<param bits>a<activation bits>"``, ``"fp16"``, ``"fp32"``,
            or AIMET tuples ``((activation bits, dtype), (param bits, dtype))``. Any set works: the
            baseline is each group's highest-cost candidate.
        eval_callback: ``eval_callback(model, num_samples) -> float``, higher is better.
        allowed_accuracy_drop: in the eval callback's units.
        forward_pass_callback: ``forward_pass_callback(model)`` running calibration batches (or a
            list of batches): calibrates an uncalibrated sim, and is the data of ``phase1_metric="sqnr"``
            (AIMET's name; ``forward_fn`` means ``forward_fn(model, batch)`` elsewhere).
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
        forward_fn: deprecated name of ``forward_pass_callback`` (warns; will be removed).

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
    forward_pass_callback = renamed_parameter(
        "choose_mixed_precision", "forward_fn", "forward_pass_callback", forward_fn, forward_pass_callback
    )
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
        forward_pass_callback=forward_pass_callback,
        fp32_accuracy=fp32_accuracy,
        progress=progress,
    )


def _check_against_config(config: object, parsed: Sequence[Candidate], settings: Mapping[str, Any]) -> None:
    who = "choose_mixed_precision"
    if not isinstance(config, MixedPrecisionConfig):
        raise parameter_error("config", who, "a MixedPrecisionConfig or None", config)
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
        raise parameter_error("sim", "set_mixed_precision", "a QuantSim", sim)
    if not isinstance(config, Mapping):
        raise parameter_error("config", "set_mixed_precision", "a mapping {layer name: candidate}", config)
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
