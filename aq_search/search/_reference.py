"""The first two trials: the cheap-first schedule (trial 0), then AIMET AutoQuant's recipe (trial 1),
with an honest account of how the reference differs from AIMET's own run.

The reference trial runs scheme selection > BN fold > CLE > AdaRound (or the closest ordering the space has) with
the user's :class:`~aq_search.AdaRoundParams` or, without them, AIMET's defaults (``AdaroundParameters``:
10,000 iterations per layer for 8-bit-or-wider weights, 15,000 below, ``reg_param=0.01``,
``beta_range=(20, 2)``, ``warm_start=0.2``; calibration batches covering up to 2,000 samples). Its
records (``reference_differences``) list what is not AIMET's: scheme ranking by output SQNR instead of
one eval call per pair, AdaRound's early stop, no early exit on the W32 check, keep-best over stages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..techniques._adaround_opt import AIMET_LEARNING_RATE, adaround_learning_rate
from ._pipeline import amp_candidate_sets
from ._schedule import ADAROUND_PATIENCE
from ._space import Choice, FloatRange, IntRange, SearchSpace

__all__ = [
    "AIMET_ADAROUND",
    "cheap_first_params",
    "enqueue_reference_trials",
    "reference_adaround",
    "reference_differences",
    "reference_params",
]

#: AIMET's ``AdaroundParameters`` defaults (iterations: 10k for weights of 8 bits or more, 15k below).
AIMET_ADAROUND: dict[str, Any] = {
    "num_iterations_8bit": 10_000,
    "num_iterations_below_8bit": 15_000,
    "reg_param": 0.01,
    "beta_range": (20.0, 2.0),
    "warm_start": 0.2,
    "learning_rate": AIMET_LEARNING_RATE,
    "max_samples": 2_000,
}
_ORDERINGS = ("scheme>bnf>cle>adaround", "scheme>bnf>cle", "bnf>cle>adaround", "bnf>cle")


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, (tuple, list)) and batch:
        return _batch_size(batch[0])
    if isinstance(batch, dict) and batch:
        return _batch_size(next(iter(batch.values())))
    return 1


def reference_adaround(user: Any, param_bw: int, calibration: Sequence[Any]) -> Any:
    """The reference trial's AdaRound settings: the user's, else AIMET's defaults for this bit-width."""
    from ..techniques import AdaRoundParams

    if user is not None:
        return user
    per_batch = max(1, _batch_size(calibration[0])) if calibration else 1
    batches = max(1, min(len(calibration), math.ceil(AIMET_ADAROUND["max_samples"] / per_batch)))
    iterations = AIMET_ADAROUND["num_iterations_8bit" if param_bw >= 8 else "num_iterations_below_8bit"]
    return AdaRoundParams(
        num_batches=batches,
        num_iterations=iterations,
        reg_param=AIMET_ADAROUND["reg_param"],
        beta_range=AIMET_ADAROUND["beta_range"],
        warm_start=AIMET_ADAROUND["warm_start"],
        learning_rate=AIMET_ADAROUND["learning_rate"],
        early_stop_patience=ADAROUND_PATIENCE,
    )


def reference_params(space: SearchSpace, orderings: Sequence[str], per_channel: bool | None) -> dict[str, Any] | None:
    """AIMET's recipe as trial parameters (ordering, scheme selection, CLE options), or ``None``."""
    ordering = next((o for o in _ORDERINGS if o in orderings), None)
    if ordering is None:
        return None
    params: dict[str, Any] = {}
    if len(orderings) > 1:
        params["pipeline__ordering"] = ordering
    candidates = space.scheme.candidates.values
    if "scheme" in ordering and len(candidates) > 1 and "select" in candidates:
        params["scheme__candidate"] = "select"
    if per_channel is None and len(space.scheme.per_channel.values) > 1:
        params["scheme__per_channel"] = True
    if "cle" in ordering and len(space.cle.high_bias_absorption.values) > 1:
        params["cle__high_bias_absorption"] = True
    if "cle" in ordering and len(space.cle.replace_relu6.values) > 1 and "always" in space.cle.replace_relu6.values:
        params["cle__replace_relu6"] = "always"  # AIMET replaces every ReLU6 it equalizes across
    return params


def reference_differences(space: SearchSpace, ordering: str, adaround: Any, user_adaround: bool) -> list[str]:
    """How the reference trial differs from AIMET AutoQuant's own run, one sentence each."""
    out = []
    if ordering not in ("scheme>bnf>cle>adaround",):
        out.append(f"ordering {ordering!r} (the space has not AIMET's scheme>bnf>cle>adaround)")
    if "scheme" in ordering and space.scheme.select_by == "sqnr":
        out.append("scheme pairs ranked by output SQNR on calibration batches (no eval call), not by one eval call each")
    if "scheme" in ordering and tuple(space.scheme.select_candidates) != (
        "tf/tf",
        "tf_enhanced/tf",
        "tf_enhanced/tf_enhanced",
        "tf_enhanced/percentile:99.9",
        "tf_enhanced/percentile:99.99",
    ):
        out.append(f"scheme candidates {list(space.scheme.select_candidates)}, not AIMET's five")
    if "adaround" in ordering:
        if user_adaround:
            out.append("AdaRound with the user's AdaRoundParams")
            rate = adaround_learning_rate(adaround)
            if adaround.learning_rate is None and rate > AIMET_LEARNING_RATE:
                out.append(
                    f"AdaRound's learning rate follows the iteration count: {rate:.3g} for {adaround.num_iterations} "
                    f"iterations (AIMET: {AIMET_LEARNING_RATE:g} however few the iterations)"
                )
        if getattr(adaround, "early_stop_patience", 0):
            out.append(
                f"AdaRound {adaround.num_iterations} iterations at most per layer, stopping early once the layer's "
                "reconstruction loss stops improving (AIMET runs every iteration)"
            )
    out.append("no early exit when the W32 check (float weights, quantized activations) misses the target")
    out.append("the trial keeps its best stage, within the cost budget (AIMET keeps its best stage too)")
    return out


_CHEAP_FIRST = ("bnf>cle>scheme>amp>adaround", "bnf>cle>scheme>adaround>amp", "bnf>scheme>amp>adaround")


def cheap_first_params(
    space: SearchSpace,
    orderings: Sequence[str],
    per_channel: bool | None,
    *,
    amp_sets: Sequence[Sequence[str]] = (),
    adaround_fixed: bool = False,
) -> dict[str, Any] | None:
    """The cost-aware schedule as trial 0: cheap stages first, then AMP within the budget, then AdaRound
    (each only if the stages before it miss).

    A trial stops at the first stage that meets the target within the budget, so AMP runs only where BN
    fold, CLE and the scheme could not get there, and AdaRound, the expensive stage, only where AMP could
    not either (``bnf>cle>scheme>amp>adaround``; ``bnf>cle>scheme>adaround>amp``, then
    ``bnf>scheme>amp>adaround``, when the space lacks it). AMP lifts the layers whose noise hurts most
    within the 1.5x BOPs budget, evaluating only its least noisy config (one call, met or not, see
    :func:`~aq_search.search._pipeline.suggest_pipeline`); AdaRound then rounds the layers left low
    for the model they now sit in. Measured against AdaRound-then-AMP (BENCHMARKS 1a): better on
    EfficientNet-Lite0 W4A8 (0.9453 against 0.9297), a tie on Fashion-MNIST W4A8 (0.8534 against 0.8542),
    and on digits W4A8 the same accuracy at 1.46x the BOPs where AdaRound alone met the target at 1.0x. AMP's
    sensitivity screen uses the fewest phase-1 samples the space allows. CLE keeps the model's
    function (ReLU6 replaced only where it does not clip, ``unclipped``, when the space offers it) and
    absorbs high biases (AIMET's default); AMP takes the space's first candidate set (``amp_sets``, as
    :func:`~aq_search.search._pipeline.amp_candidate_sets` fills them in), so trial 0 draws nothing at
    random: its AdaRound (the last stage) takes the space's fewest iterations and AIMET's other defaults, unless
    the user fixed AdaRound's settings (``adaround_fixed``). The AIMET reference recipe runs after it
    (trial 1), so it costs nothing when this trial meets the target. ``None`` when the space has no such
    ordering.
    """
    ordering = next((o for o in _CHEAP_FIRST if o in orderings), None)
    if ordering is None:
        return None
    params: dict[str, Any] = {"pipeline__ordering": ordering} if len(orderings) > 1 else {}
    candidates = space.scheme.candidates.values
    if len(candidates) > 1 and "select" in candidates:
        params["scheme__candidate"] = "select"
    if per_channel is None and len(space.scheme.per_channel.values) > 1:
        params["scheme__per_channel"] = True
    if "cle" in ordering:
        relu6 = space.cle.replace_relu6.values
        if len(relu6) > 1:
            params["cle__replace_relu6"] = "unclipped" if "unclipped" in relu6 else relu6[0]
        if len(space.cle.high_bias_absorption.values) > 1:
            params["cle__high_bias_absorption"] = True
    if len(amp_sets) > 1:
        params["amp__candidates"] = "/".join(amp_sets[0])
    phase1 = space.amp.num_samples_for_phase_1
    if isinstance(phase1, Choice) and len(phase1.values) > 1:
        params["amp__num_samples_for_phase_1"] = min(phase1.values)  # the cheapest sensitivity screen
    elif isinstance(phase1, IntRange) and phase1.low < phase1.high:
        params["amp__num_samples_for_phase_1"] = phase1.low
    if "adaround" in ordering and not adaround_fixed:
        params.update(_aimet_adaround_params(space))
    return params


def _aimet_adaround_params(space: SearchSpace) -> dict[str, Any]:
    """Trial 0's AdaRound settings (nothing drawn at random): AIMET's defaults clamped into the space's
    ranges, except the iteration count, the space's fewest (this trial is the cheap one; AIMET's own
    count runs in the reference trial after it). The search also scales iterations by bit-width and
    stops early on a flat reconstruction loss (``_schedule.py``).
    """
    aimet = {
        "num_iterations": 0,  # clamped up to the space's fewest
        "reg_param": AIMET_ADAROUND["reg_param"],
        "warm_start": AIMET_ADAROUND["warm_start"],
        "beta_high": AIMET_ADAROUND["beta_range"][0],
        "beta_low": AIMET_ADAROUND["beta_range"][1],
    }
    params: dict[str, Any] = {}
    for name, value in aimet.items():
        spec = space.adaround.get(name)
        if isinstance(spec, (IntRange, FloatRange)) and spec.low < spec.high:
            clamped = min(max(value, spec.low), spec.high)
            params[f"adaround__{name}"] = int(clamped) if isinstance(spec, IntRange) else float(clamped)
        elif isinstance(spec, Choice) and len(spec.values) > 1:
            params[f"adaround__{name}"] = min(spec.values, key=lambda v: abs(float(v) - float(value)))
    return params


def enqueue_reference_trials(aq: Any, study: Any, orderings: Sequence[str], ctx: Any) -> None:
    """Enqueue the cheap-first trial (0) and AIMET's recipe (1) in a new study, as far as the space has them."""
    # cheap first (trial 0): the reference recipe's expensive AdaRound runs (trial 1) only when it misses
    cheap = cheap_first_params(
        aq.space,
        orderings,
        aq.per_channel,
        amp_sets=amp_candidate_sets(aq.space, aq.param_bw, aq.output_bw, aq._fixed()),
        adaround_fixed=aq._adaround_params is not None,
    )
    if cheap is not None:
        study.enqueue_trial(cheap, user_attrs={"cheap_first": True}, skip_if_exists=True)
    params = aq._reference_params(orderings)
    if params is not None:
        attrs = aq._reference_attrs(params, orderings, ctx)
        if aq.space.replay_reference == "aimet":  # AIMET's own flow (see _aimet_flow.py)
            from ._aimet_flow import aimet_attrs  # here: _aimet_flow imports this module

            attrs.update(aimet_attrs(params, orderings, aq._adaround_params, aq.param_bw, ctx))
        if cheap is not None:
            attrs["reference_differences"].append(
                "runs after the cheap-first trial 0, only when that trial missed the target (AIMET runs it first)"
            )
        study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=True)
