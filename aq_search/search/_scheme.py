"""The ``scheme`` stage: which range setting (quant scheme pair, per-channel weights) the sim is built with.

It registers itself like any technique; its section of a space (``scheme:``), its trial parameters
(``scheme__candidate``, ``scheme__per_channel``), its label and its run are the hooks of its spec.
``select`` scores every pair at its point of the pipeline and keeps the best (AIMET's scheme selection).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.fx as fx
from torch import Tensor, nn

from .._errors import AQSearchError
from .._numerics import signal_and_noise, sqnr_db
from ..quantsim import QuantSim
from ..quantsim._range import _parse_scheme
from ..techniques._config import TechniqueConfig
from ..techniques._registry import SuggestContext, TechniqueSpec, register_technique
from ._context import RunContext, StageState
from ._params import Choice, Where, bool_choice, mapping

__all__ = [
    "AIMET_SCHEME_CANDIDATES",
    "SELECT_BY",
    "SchemeConfig",
    "SchemeSelectConfig",
    "SchemeSpace",
    "StageError",
    "output_sqnr",
]


class StageError(AQSearchError):
    """A pipeline stage failed; the trial fails with this message and the study goes on."""


#: How ``scheme: select`` ranks its pairs: the eval callback (AIMET) or output SQNR (no eval call).
SELECT_BY = ("eval", "sqnr")

#: AIMET AutoQuant's scheme candidates (weights / activations), tried by ``scheme: select``.
AIMET_SCHEME_CANDIDATES: tuple[str, ...] = (
    "tf/tf",
    "tf_enhanced/tf",
    "tf_enhanced/tf_enhanced",
    "tf_enhanced/percentile:99.9",
    "tf_enhanced/percentile:99.99",
)


@dataclass(frozen=True)
class SchemeSpace:
    """``scheme`` stage: which range settings a trial may use.

    ``candidates`` are ``"<param scheme>/<activation scheme>"`` pairs (a percentile as
    ``percentile:99.9``), plus ``select`` = evaluate every pair in ``select_candidates`` at that
    point of the pipeline and keep the best (AIMET's scheme selection). ``select_by`` is how
    ``select`` ranks the pairs: ``eval`` (the eval callback, one call per pair, as AIMET) or ``sqnr``
    (the model output's signal-to-quantization-noise ratio against FP32 on calibration batches: no
    eval call).
    """

    candidates: Choice
    select_candidates: tuple[str, ...]
    per_channel: Choice
    select_by: str = "eval"


@dataclasses.dataclass(frozen=True)
class SchemeConfig(TechniqueConfig):
    """Range setting chosen for the sim: ``"<param scheme>/<activation scheme>"`` and per-channel weights."""

    technique: ClassVar[str] = "scheme"

    pair: str = "tf_enhanced/tf_enhanced"
    per_channel: bool = True

    def __post_init__(self) -> None:
        self._check_bool("per_channel")
        if not isinstance(self.pair, str) or self.pair.count("/") != 1:
            raise self._fail("pair", "'<param scheme>/<activation scheme>'", self.pair)

    @property
    def param_scheme(self) -> str:
        return self.pair.split("/")[0]

    @property
    def activation_scheme(self) -> str:
        return self.pair.split("/")[1]


@dataclasses.dataclass(frozen=True)
class SchemeSelectConfig(TechniqueConfig):
    """AIMET-style scheme selection: score every pair at this point, keep the best.

    ``select_by="eval"`` scores with the eval callback (one call per pair, as AIMET does);
    ``"sqnr"`` with the signal-to-quantization-noise ratio of the model's outputs against the FP32
    model's on (up to four) calibration batches, which costs no eval call.
    """

    technique: ClassVar[str] = "scheme"

    candidates: tuple[str, ...] = ()
    per_channel: bool = True
    select_by: str = "eval"

    def __post_init__(self) -> None:
        self._check_bool("per_channel")
        if not self.candidates or not all(isinstance(c, str) and c.count("/") == 1 for c in self.candidates):
            raise self._fail("candidates", "a non-empty tuple of '<param>/<activation>' scheme pairs", self.candidates)
        if self.select_by not in ("eval", "sqnr"):
            raise self._fail("select_by", "'eval' or 'sqnr'", self.select_by)



def _scheme_pair(text: Any, key: str, where: Where) -> str:
    if not isinstance(text, str):
        raise where.error(key, f"a scheme candidate must be a string like 'tf_enhanced/tf'. Got {text!r} instead.")
    if text == "select":
        return text
    parts = text.split("/")
    if len(parts) != 2:
        raise where.error(
            key, f"{text!r}: a scheme candidate is '<param scheme>/<activation scheme>', e.g. 'tf_enhanced/percentile:99.9'."
        )
    for part in parts:
        try:
            _parse_scheme(part)
        except Exception as err:  # noqa: BLE001 - re-raised with the file and key
            raise where.error(key, f"{text!r}: {err}") from None
    return text


def _parse(raw: Any, where: Where) -> SchemeSpace:
    sch = mapping(raw, "scheme", where, {"candidates", "select_candidates", "select_by", "per_channel"})
    cands = sch.get("candidates", ["select"])
    cands = cands if isinstance(cands, (list, tuple)) else [cands]
    if not cands:
        raise where.error("scheme.candidates", "must not be empty.")
    scheme = SchemeSpace(
        candidates=Choice(tuple(_scheme_pair(c, "scheme.candidates", where) for c in cands)),
        select_candidates=tuple(
            _scheme_pair(c, "scheme.select_candidates", where) for c in sch.get("select_candidates", AIMET_SCHEME_CANDIDATES)
        ),
        per_channel=bool_choice(sch.get("per_channel", True), "scheme.per_channel", where),
        select_by=sch.get("select_by", "eval"),
    )
    if scheme.select_by not in SELECT_BY:
        raise where.error("scheme.select_by", f"must be one of {', '.join(SELECT_BY)}. Got {scheme.select_by!r} instead.")
    if "select" in scheme.select_candidates:
        raise where.error("scheme.select_candidates", "'select' cannot be one of the pairs it selects from.")
    return scheme


def _to_yaml(scheme: SchemeSpace) -> dict[str, Any]:
    return {
        "candidates": scheme.candidates.to_yaml(),
        "select_candidates": list(scheme.select_candidates),
        "select_by": scheme.select_by,
        "per_channel": scheme.per_channel.to_yaml(),
    }


def _suggest(ctx: SuggestContext) -> SchemeConfig | SchemeSelectConfig:
    """``scheme__candidate`` and ``scheme__per_channel`` (unless the user fixed per-channel)."""
    space: SchemeSpace = ctx.section
    pair = ctx.draw("candidate", space.candidates)
    per_channel = ctx.fixed if ctx.fixed is not None else bool(ctx.draw("per_channel", space.per_channel))
    if pair == "select":
        return SchemeSelectConfig(candidates=space.select_candidates, per_channel=per_channel, select_by=space.select_by)
    return SchemeConfig(pair=pair, per_channel=per_channel)


def _describe(c: Any) -> str:
    tensor = "" if c.per_channel else ", per-tensor"
    if isinstance(c, SchemeSelectConfig):
        by = " by sqnr" if c.select_by == "sqnr" else ""
        return f"scheme(select{by}{tensor})"
    return f"scheme({c.pair}{tensor})"


def _run(ctx: RunContext, state: StageState, stage: Any) -> None:
    """Set the range setting; ``select`` builds and scores every pair (or takes the study's choice)."""
    config = stage.config
    if isinstance(config, SchemeConfig):
        state.pair, state.per_channel, state.sim = config.pair, config.per_channel, None
        return
    state.per_channel = config.per_channel
    record = state.record
    if record is not None and isinstance(record.get("choice"), str):
        state.pair = record["choice"]
        state.sim = ctx.calibrated_sim(state.model, state.pair, state.per_channel)
        state.note = str(record.get("note", ""))
    else:
        ties: list[tuple[float, str, QuantSim]] = []
        state.pair, state.sim, state.note, state.known_score = _select_scheme(ctx, state.model, config, ties)
        state.alternatives = [(pair, sim, value) for value, pair, sim in ties if pair != state.pair]
    state.choice = state.pair


_SQNR_BATCHES = 4


def _outputs(model: nn.Module, ctx: RunContext, num_batches: int) -> list[Tensor]:
    """The float tensors ``model`` returns on the first ``num_batches`` calibration batches."""
    from .._data import feed_batch

    out: list[Tensor] = []

    def keep(value: Any) -> None:
        if isinstance(value, Tensor):
            if value.is_floating_point():
                out.append(value.detach().double())
        elif isinstance(value, (tuple, list)):
            for v in value:
                keep(v)
        elif isinstance(value, Mapping):
            for v in value.values():
                keep(v)

    handle = model.register_forward_hook(lambda _m, _args, output: keep(output))
    try:
        with torch.no_grad():
            for batch in ctx.calibration[:num_batches]:
                if ctx.forward_fn is not None:
                    ctx.forward_fn(model, batch)
                else:
                    feed_batch(model, batch)
    finally:
        handle.remove()
    return out


def output_sqnr(reference: Sequence[Tensor], outputs: Sequence[Tensor]) -> float:
    """Signal-to-quantization-noise ratio in dB of ``outputs`` against ``reference`` (all tensors together)."""
    if len(reference) != len(outputs) or any(r.shape != o.shape for r, o in zip(reference, outputs, strict=True)):
        raise StageError("the quantized model's outputs differ in number or shape from the FP32 model's; cannot compare them")
    return sqnr_db(*signal_and_noise(reference, outputs))


def _select_scheme(
    ctx: RunContext,
    model: fx.GraphModule,
    config: SchemeSelectConfig,
    ties: list[tuple[float, str, QuantSim]] | None = None,
) -> tuple[str, QuantSim, str, float | None]:
    """The best pair, its sim, a note, and its eval score when ``select_by="eval"`` (``None`` for sqnr).

    With ``select_by="sqnr"``, ``ties`` (when given) receives ``(sqnr, pair, sim)`` of every pair whose
    SQNR is within ``ctx.tie_db`` (the space's ``proxy_tie_db``) of the best (the best included), for the stage's screen to break
    the tie by evaluation (see :mod:`._screen`).
    """
    best: tuple[float, str, QuantSim] | None = None
    scored: list[tuple[float, str, QuantSim]] = []
    scores = []
    if config.select_by == "sqnr":
        n_batches = min(_SQNR_BATCHES, len(ctx.calibration))
        if ctx.reference_outputs is None:
            ctx.reference_outputs = _outputs(ctx.model, ctx, n_batches)
        if not ctx.reference_outputs:
            raise StageError("scheme selection by sqnr needs the model to return float tensors; use select_by: eval")
    for pair in config.candidates:
        sim = ctx.calibrated_sim(model, pair, config.per_channel)
        if config.select_by == "sqnr":
            assert ctx.reference_outputs is not None
            score = output_sqnr(ctx.reference_outputs, _outputs(sim.model, ctx, n_batches))
            scores.append(f"{pair}={score:.1f} dB")
            scored.append((score, pair, sim))
        else:
            score = ctx.evaluate(sim.model, ctx.intermediate_num_samples)
            scores.append(f"{pair}={score:.4f}")
        if best is None or score > best[0]:
            best = (score, pair, sim)
    assert best is not None
    if ties is not None and config.select_by == "sqnr" and ctx.tie_db > 0:
        ties.extend(t for t in scored if best[0] - t[0] <= ctx.tie_db)
    note = "selected " + best[1] + " of " + ", ".join(scores)
    return best[1], best[2], note, (best[0] if config.select_by == "eval" else None)


register_technique(
    TechniqueSpec(
        key="scheme",
        config_class=SchemeConfig,
        apply=None,
        acts_on="scheme",
        description="choose the quant scheme (param/activation range setting, per-channel weights)",
        cost="data",
        in_every_space=True,
        config_classes=(SchemeSelectConfig,),
        parse_section=_parse,
        section_to_yaml=_to_yaml,
        suggest=_suggest,
        run=_run,
        describe_config=_describe,
    )
)
