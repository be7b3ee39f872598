"""Lazy stage scoring and proxy ties: spend evaluations where they can change the outcome.

Two rules, both driven by the free proxy (the model output's SQNR against FP32 on calibration batches,
as scheme selection by ``sqnr`` uses it):

* **Lazy stage scoring.** A stage followed by a cheap stage (cost class ``free`` or ``data``: BN fold,
  CLE, scheme, bias correction) is not evaluated: the next stage costs next to nothing, so its score
  tells the search more for the same call. Its sim is kept as a *deferred* candidate with its proxy.
* **Screen at the next evaluated stage.** The candidates are that stage's sim, the deferred stages'
  sims and, after ``scheme: select`` by SQNR, the pairs whose SQNR is within the space's ``proxy_tie_db``
  of the best. They are evaluated best proxy first; a further candidate is evaluated only when its proxy
  is within ``proxy_tie_db`` of the best proxy (a near tie: the proxy cannot tell them apart) **and** the best score so
  far misses the target while the target is within that score's sampling noise (its upper confidence
  bound reaches it, see :mod:`._fidelity`): only then can the tie-break change whether the target is met.
  At most :data:`MAX_SCREENED` candidates are evaluated. A candidate never evaluated is never a result.
* **Predicted misses are not evaluated.** Before a screen that more stages follow spends a call, the
  study's records are consulted (:func:`predicted_miss`): when a model already scored in the study had an
  output SQNR at least as high as every candidate's and still missed the target by more than one standard
  error of its score, the candidates are predicted to miss as well, and evaluating them could only have
  stopped the pipeline early if they met. The stage goes unscored and the run goes on; its input's
  estimate (that record's score) guides the next stage's fidelity (see ``_run._score``). For this, a
  scored stage that clearly missed records its proxy (:func:`clear_miss`), measured if the screen did not.

With ties on, a model stage (BN fold, CLE) that lowers the proxy by more than the tie margin against the
deferred stage before it (same pair) is undone: the run goes on from the model before it
(:func:`undo_if_worse`; e.g. CLE with ReLU6 replaced on EfficientNet-Lite0 W8A8 drops the output SQNR by
about 5 dB).

Both are the space's choice: ``stage_scoring: lazy`` and ``proxy_tie_db`` (the ``default`` space: lazy,
1 dB). The AIMET flow (``replay_reference: aimet``) scores every stage and turns lazy scoring off.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..quantsim import QuantSim
from ..techniques._registry import registered_techniques
from ._context import RunContext
from ._fidelity import Z_STAGE, upper_bound, worth_confirming

logger = logging.getLogger(__name__)

__all__ = [
    "CHEAP_COSTS",
    "MAX_SCREENED",
    "Candidate",
    "Screened",
    "clear_miss",
    "defers",
    "predicted_miss",
    "proxy_sqnr",
    "screen",
    "undo_if_worse",
]
#: most candidates one screen evaluates.
MAX_SCREENED = 4
#: cost classes of a next stage that make evaluating the stage before it not worth a call.
CHEAP_COSTS = ("free", "data")


@dataclass
class Candidate:
    """A scored-or-not model the screen may evaluate: a stage's sim (``pair`` set: a scheme alternative)."""

    index: int
    sim: QuantSim
    model: Any
    sqnr: float | None
    pair: str | None = None
    known: float | None = None  # a score measured while running the stage (no eval call needed)
    known_full: bool = False
    current: bool = False


@dataclass
class Screened:
    """A candidate the screen evaluated, its score and the samples it was scored on (``None``: in full)."""

    candidate: Candidate
    score: float
    num_samples: int | None


def defers(ctx: RunContext, stages: Any, index: int, has_record: bool) -> bool:
    """Whether stage ``index`` is left unevaluated (the next stage is cheap and the proxy is available)."""
    if not ctx.lazy_scoring or has_record or index + 1 >= len(stages):
        return False
    spec = registered_techniques().get(stages[index + 1].key)
    return spec is not None and spec.cost in CHEAP_COSTS and reference_outputs(ctx)


def undo_if_worse(
    ctx: RunContext, key: str, state: Any, deferred: list[Candidate], index: int, later: Sequence[str] = ()
) -> bool:
    """Undo model stage ``index`` (BN fold, CLE ...) when the proxy says it hurts; whether it was undone.

    Only under lazy scoring with ties on, when the stage before it was deferred with the same pair: if the
    stage lowers the output SQNR by more than ``ctx.tie_db`` (more than the proxy's noise), the run goes on
    from the model before it (``state.model`` and ``state.sim`` are put back, the note says why). The rule is
    deterministic on the same data, so replaying the trial's pipeline undoes the stage again. A stage that a
    later stage of the pipeline (``later``: their keys) requires (BN fold before CLE) is never undone.
    """
    specs = registered_techniques()
    spec = specs.get(key)
    if not ctx.lazy_scoring or ctx.tie_db <= 0 or spec is None or spec.acts_on != "model" or state.sim is None:
        return False
    if any(key in getattr(specs.get(k), "requires", ()) for k in later):
        return False
    if not deferred or deferred[-1].index != index - 1 or deferred[-1].pair != state.pair or deferred[-1].sqnr is None:
        return False
    before = deferred[-1]
    after = proxy_sqnr(ctx, state.sim)
    assert before.sqnr is not None
    if after is None or after >= before.sqnr - ctx.tie_db:
        return False
    state.model, state.sim = before.model, before.sim
    state.note = (
        f"undone: output SQNR fell from {before.sqnr:.1f} to {after:.1f} dB at {state.pair} (more than proxy_tie_db); "
        "the next stages go on from the model before it"
    )
    return True


def reference_outputs(ctx: RunContext) -> bool:
    """Make sure the FP32 outputs on calibration batches are there; whether the proxy can be computed."""
    from ._scheme import _SQNR_BATCHES, _outputs

    if ctx.reference_outputs is None:
        try:
            ctx.reference_outputs = _outputs(ctx.model, ctx, min(_SQNR_BATCHES, len(ctx.calibration)))
        except Exception as exc:  # no proxy, then every stage is evaluated as before
            logger.info("no output-SQNR proxy (FP32 outputs on calibration batches failed: %s); every stage is evaluated", exc)
            logger.debug("FP32 outputs for the proxy failed", exc_info=True)
            ctx.reference_outputs = []
    return bool(ctx.reference_outputs)


def proxy_sqnr(ctx: RunContext, sim: QuantSim) -> float | None:
    """Output SQNR (dB) of ``sim`` against FP32 on calibration batches, or ``None`` when unavailable."""
    from ._scheme import _outputs, output_sqnr

    if not reference_outputs(ctx):
        return None
    assert ctx.reference_outputs is not None
    try:
        value = output_sqnr(ctx.reference_outputs, _outputs(sim.model, ctx, len(ctx.reference_outputs)))
    except Exception as exc:  # outputs of another shape: no proxy
        logger.debug("no output-SQNR proxy for this sim: %s", exc, exc_info=True)
        return None
    return value if not math.isnan(value) else None


def _noise_n(ctx: RunContext, num_samples: int | None) -> int | None:
    """The sample count a score's noise is judged on: the subset's, else the full evaluation's size."""
    if num_samples is not None:
        return num_samples
    return getattr(ctx.evaluate, "eval_size", None)


def screen(
    ctx: RunContext,
    candidates: list[Candidate],
    score: Callable[[Candidate], tuple[float, int | None]],
    within_budget: Callable[[QuantSim], bool],
    last: bool = True,
) -> list[Screened]:
    """Evaluate the candidates as the module docstring says; returns those evaluated, in order.

    ``last``: the stage is the pipeline's last (its near ties are broken while the target is within two
    standard errors of the best score; one, for a stage that more stages follow: see :mod:`._fidelity`).
    """
    if not candidates:
        return []
    with_proxy = [c for c in candidates if c.sqnr is not None]
    if len(with_proxy) != len(candidates):  # no proxy for some: only the current stage, as before
        current = next(c for c in candidates if c.current)
        s, n = score(current)
        return [Screened(current, s, n)]
    # best proxy first; a tie keeps the current stage (the later, usually the one the pipeline goes on with) first
    order = sorted(candidates, key=lambda c: (-(c.sqnr or 0.0), not c.current))
    top = order[0].sqnr or 0.0
    out: list[Screened] = []
    margin = ctx.fp32_accuracy - ctx.target
    for c in order:
        if out:
            best = max(out, key=lambda s: (within_budget(s.candidate.sim), s.score))
            if len(out) >= MAX_SCREENED or top - (c.sqnr or 0.0) > ctx.tie_db:
                break
            if best.score >= ctx.target and best.num_samples is None and within_budget(best.candidate.sim):
                break  # met: nothing to break a tie for
            if not worth_confirming(best.score, _noise_n(ctx, best.num_samples), ctx.target, margin, last):
                break  # the best is further below the target than its noise: a near tie will not reach it
        s, n = score(c)
        out.append(Screened(c, s, n))
    return out


def clear_miss(ctx: RunContext, score: float, num_samples: int | None) -> bool:
    """Whether a score misses the target by more than one standard error (lazy scoring with ties on only:
    then a record of it can predict misses, see :func:`predicted_miss`)."""
    if not ctx.lazy_scoring or ctx.tie_db <= 0 or math.isnan(score):
        return False
    margin = ctx.fp32_accuracy - ctx.target
    return upper_bound(score, _noise_n(ctx, num_samples), margin, Z_STAGE) < ctx.target


def predicted_miss(ctx: RunContext, candidates: Sequence[Candidate]) -> dict[str, Any] | None:
    """The study's record that predicts every candidate misses the target, or ``None`` (see the module docstring).

    Only under lazy scoring with ties on (the proxy is trusted), when every candidate has a proxy and none
    has a known score (a known one costs nothing to use). A record qualifies when its proxy is at least
    the best candidate's and it clearly missed (:func:`clear_miss`); the highest-scoring such record is
    returned.
    """
    known = ctx.known
    if not ctx.lazy_scoring or ctx.tie_db <= 0 or known is None or not candidates:
        return None
    if any(c.sqnr is None or c.known is not None for c in candidates):
        return None
    top = max(float(c.sqnr or 0.0) for c in candidates)
    found: dict[str, Any] | None = None
    for record in known.records.values():
        proxy, score = record.get("proxy"), record.get("score")
        if not isinstance(proxy, (int, float)) or not isinstance(score, (int, float)) or not math.isfinite(score):
            continue
        samples = record.get("num_samples")
        if proxy < top or not clear_miss(ctx, float(score), int(samples) if samples is not None else None):
            continue
        if found is None or score > found["score"]:
            found = record
    return found
