"""``replay_reference: aimet``: the reference trial runs AIMET AutoQuant's own flow (for benchmarks).

With ``replay_reference: true`` the reference trial replays AIMET's recipe the aq-search way (scheme
pairs ranked as the space says, AdaRound stopping early, stages scored on the space's subset). With
``replay_reference: aimet`` it follows AIMET 2.30's ``AutoQuant._optimize_main`` as closely as the
pipeline allows:

* scheme selection by **one full evaluation per pair**, over AIMET's five candidate pairs (only the
  ``tf`` ones for 16-bit weights or activations, as AIMET filters them; no evaluation when one is left);
* the **W32 check**: the chosen activation scheme with float weights, one full evaluation; when it
  misses the target, AIMET stops ("unlikely to meet the target with PTQ") and so does this trial,
  recorded as ``reference_early_exit``;
* BN fold, CLE, AdaRound, each scored on the **full** evaluation, stopping at the first stage that
  meets the target (AIMET's other early exit); AdaRound with the user's ``AdaRoundParams`` or
  AIMET's defaults run to the last iteration (no early stop).

The trial's records carry ``reference_flow: "aimet"`` and the remaining differences from AIMET's run.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ._pipeline import Pipeline, RunContext, SchemeSelectConfig, Stage, StageResult
from ._reference import AIMET_ADAROUND, reference_adaround

__all__ = [
    "AIMET_SCHEME_CANDIDATES",
    "FLOW_ATTR",
    "aimet_adaround",
    "aimet_after_stage",
    "aimet_attrs",
    "aimet_candidates",
    "aimet_differences",
    "aimet_flow_pipeline",
    "full_evaluations",
    "w32_check",
]

logger = logging.getLogger(__name__)

#: The trial attribute naming the reference flow that ran (``"aimet"``; absent for the aq-search replay).
FLOW_ATTR = "reference_flow"

#: AIMET 2.30 AutoQuant's default quant scheme candidates, ``"<param>/<activation>"``.
AIMET_SCHEME_CANDIDATES = (
    "tf/tf",
    "tf_enhanced/tf",
    "tf_enhanced/tf_enhanced",
    "tf_enhanced/percentile:99.9",
    "tf_enhanced/percentile:99.99",
)


def aimet_candidates(param_bw: int, output_bw: int) -> tuple[str, ...]:
    """AIMET's candidates for these bit-widths: 16-bit (or wider) weights/activations keep only ``tf``."""
    pairs: tuple[str, ...] = AIMET_SCHEME_CANDIDATES
    if param_bw >= 16:
        pairs = tuple(p for p in pairs if p.split("/")[0] == "tf")
    if output_bw >= 16:
        pairs = tuple(p for p in pairs if p.split("/")[1] == "tf")
    return pairs


def aimet_adaround(user: Any, param_bw: int, calibration: Sequence[Any]) -> Any:
    """The user's ``AdaRoundParams`` (AIMET's learning rate where they leave it unset), else AIMET's defaults
    run to the last iteration (no early stop)."""
    params = reference_adaround(user, param_bw, calibration)
    if user is not None:
        if params.learning_rate is None:
            return dataclasses.replace(params, learning_rate=AIMET_ADAROUND["learning_rate"])
        return params
    return dataclasses.replace(params, early_stop_patience=0)


def aimet_flow_pipeline(pipeline: Pipeline, param_bw: int, output_bw: int) -> Pipeline:
    """``pipeline`` with its scheme selection made AIMET's: full-eval scores over AIMET's candidates."""
    stages = []
    for stage in pipeline.stages:
        config = stage.config
        if isinstance(config, SchemeSelectConfig):
            config = dataclasses.replace(config, candidates=aimet_candidates(param_bw, output_bw), select_by="eval")
        stages.append(Stage(stage.key, config))
    return Pipeline(tuple(stages))


def aimet_differences(ordering: str, user_adaround: bool) -> list[str]:
    """How the AIMET-flow reference trial still differs from AIMET's own run, one sentence each."""
    out = []
    if ordering != "scheme>bnf>cle>adaround":
        out.append(f"ordering {ordering!r} (the space has not AIMET's scheme>bnf>cle>adaround)")
    out.append(
        "CLE runs on the BN-folded model and AdaRound on the CLE result (AIMET applies CLE to the FP32 model, "
        "folding inside, and AdaRound to the better of its BN-fold and CLE models)"
    )
    out.append("aq-search's QuantSim, BN fold, CLE and AdaRound implementations, not AIMET's")
    if user_adaround:
        out.append("AdaRound with the user's AdaRoundParams")
    return out


def aimet_attrs(
    params: dict[str, Any], orderings: Sequence[str], user_adaround: Any, param_bw: int, ctx: RunContext
) -> dict[str, Any]:
    """The reference trial's user attributes when it runs AIMET's flow (they replace the replay's)."""
    ordering = str(params.get("pipeline__ordering", orderings[0]))
    ada = aimet_adaround(user_adaround, param_bw, ctx.calibration)
    return {
        FLOW_ATTR: "aimet",
        "reference_adaround": ada.to_dict() if "adaround" in ordering else None,
        "reference_differences": aimet_differences(ordering, user_adaround is not None),
    }


@contextmanager
def full_evaluations(ctx: RunContext) -> Iterator[None]:
    """Score every stage (and every scheme candidate) on the full evaluation, as AIMET does."""
    saved, lazy = ctx.intermediate_num_samples, ctx.lazy_scoring
    ctx.intermediate_num_samples, ctx.lazy_scoring = None, False
    try:
        yield
    finally:
        ctx.intermediate_num_samples, ctx.lazy_scoring = saved, lazy


def w32_check(ctx: RunContext, pipeline: Pipeline, index: int, result: StageResult) -> dict[str, Any] | None:
    """AIMET's W32 evaluation after the scheme stage: float weights, the chosen activation scheme.

    Returns ``None`` after any other stage, else ``{"w32_score", "early_exit", "note"}``; ``early_exit``
    is true when the score misses the target (AIMET returns no model then). One full evaluation.
    """
    from ..quantsim import QuantSim

    stage = pipeline.stages[index]
    if stage.key != "scheme":
        return None
    pair = result.choice if isinstance(result.choice, str) else getattr(stage.config, "pair", ctx.default_pair)
    per_channel = bool(getattr(stage.config, "per_channel", ctx.default_per_channel))
    sim = QuantSim(
        ctx.model,
        ctx.dummy_input,
        activation_quant_scheme=pair.split("/")[1],
        default_param_bw=None,
        default_output_bw=ctx.output_bw,
        per_channel=per_channel,
        activation_symmetric=ctx.activation_symmetric,
        leaf_modules=ctx.leaf_modules,
    )
    sim.compute_encodings(ctx.feed)
    score = float(ctx.evaluate(sim.model, None))
    exit_ = score < ctx.target
    note = f"W32A{ctx.output_bw} ({pair.split('/')[1]}) scored {score:.4f}" + (
        f" < target {ctx.target:.4f}: AIMET's early exit, the trial stops here" if exit_ else ""
    )
    logger.info("reference (AIMET flow): %s", note)
    return {"w32_score": score, "early_exit": exit_, "note": note}


def aimet_after_stage(trial: Any, ctx: RunContext, pipeline: Pipeline, index: int, result: StageResult) -> bool | None:
    """The AIMET flow's decision after a stage: ``True`` stop, ``False`` go on, ``None`` the usual rules.

    After the scheme stage: the W32 check (recorded as ``reference_w32``; a miss stops the trial and is
    recorded as ``reference_early_exit``); AIMET scores no model at that point, so a scheme stage that
    meets the target does not end the trial either. After the other stages: the usual rules (stop at
    the first stage that meets the target).
    """
    check = w32_check(ctx, pipeline, index, result)
    if check is None:
        return None
    trial.set_user_attr("reference_w32", {"score": check["w32_score"], "note": check["note"]})
    if check["early_exit"]:
        trial.set_user_attr("reference_early_exit", check["note"])
        return True
    return False
