"""A pipeline is an ordered tuple of technique configs, applied by one loop.

:func:`suggest_pipeline` is the define-by-run function that turns an Optuna trial into a
:class:`Pipeline`; replaying a trial uses the same function with ``optuna.trial.FixedTrial``.
:func:`run_pipeline` applies the stages one by one, evaluating after each. Both read the technique
registry (:func:`~aq_search.techniques.registered_techniques`): each stage's trial parameters, label
and run come from its technique's spec.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import torch.fx as fx

from .._errors import InvalidInputError
from ..quantsim import QuantSim
from ..techniques._config import TechniqueConfig
from ..techniques._registry import SuggestContext, registered_techniques
from ._context import RunContext, model_fingerprint  # noqa: F401
from ._params import Section, suggest_param
from ._schedule import ADAROUND_PATIENCE, adaround_iterations
from ._scheme import SchemeConfig, SchemeSelectConfig, StageError, _outputs, _select_scheme, output_sqnr  # noqa: F401
from ._space import SearchSpace, validate_ordering

__all__ = [
    "Pipeline",
    "PipelineRun",
    "RunContext",
    "SchemeConfig",
    "SchemeSelectConfig",
    "Stage",
    "StageError",
    "StageResult",
    "pipeline_from_dict",
    "run_pipeline",
    "suggest_pipeline",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline: a technique key and its config."""

    key: str
    config: Any

    def describe(self) -> str:
        """Its label (the technique's ``describe_config`` hook, else ``key(dim=value ...)``)."""
        spec = registered_techniques().get(self.key)
        return spec.describe(self.config) if spec is not None else self.key


@dataclass(frozen=True)
class Pipeline:
    """An ordered tuple of stages."""

    stages: tuple[Stage, ...]

    @property
    def ordering(self) -> str:
        return ">".join(s.key for s in self.stages)

    def __str__(self) -> str:
        return " > ".join(s.describe() for s in self.stages) or "(no techniques)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ordering": self.ordering,
            "stages": [{"technique": s.key, "type": type(s.config).__name__, "config": s.config.to_dict()} for s in self.stages],
        }


def _config_types() -> dict[str, type[TechniqueConfig]]:
    """Every config class a registered technique's stage may carry, by name (reloading reads these)."""
    types: dict[str, type[TechniqueConfig]] = {}
    for spec in registered_techniques().values():
        for cls in (spec.config_class, *spec.config_classes):
            types[cls.__name__] = cls
    return types


def pipeline_from_dict(data: Any, where: str = "pipeline") -> Pipeline:
    """Rebuild a :class:`Pipeline` from :meth:`Pipeline.to_dict` output."""
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        raise InvalidInputError(f"{where}: not a pipeline description (needs 'stages').")
    types = _config_types()
    stages: list[Stage] = []
    for i, s in enumerate(data["stages"]):
        if not isinstance(s, dict) or s.get("type") not in types:
            raise InvalidInputError(f"{where}: stage {i} has an unknown type {s.get('type') if isinstance(s, dict) else s!r}.")
        stages.append(Stage(str(s["technique"]), types[s["type"]].from_dict(s.get("config", {}), where=f"{where} stage {i}")))
    validate_ordering(">".join(s.key for s in stages)) if stages else None
    return Pipeline(tuple(stages))


# -- define-by-run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fixed:
    """Settings the user fixed (they replace the space's dimensions of their technique)."""

    adaround: Any = None  # AdaRoundParams
    amp_candidates: tuple[str, ...] | None = None
    per_channel: bool | None = None

    def for_technique(self, key: str) -> Any:
        """What the user fixed for technique ``key`` (``AutoQuant``'s ``adaround_params``,
        ``mixed_precision_candidates``, ``per_channel``), or ``None``."""
        return {"adaround": self.adaround, "amp": self.amp_candidates, "scheme": self.per_channel}.get(key)


def amp_candidate_sets(space: SearchSpace, param_bw: int, output_bw: int, fixed: Fixed) -> list[tuple[str, ...]]:
    """The AMP candidate sets the search may use (see :func:`._ampstage.candidate_sets`)."""
    from ._ampstage import candidate_sets

    return candidate_sets(space, param_bw, output_bw, fixed.amp_candidates)


def usable_orderings(space: SearchSpace, param_bw: int, output_bw: int, fixed: Fixed) -> list[str]:
    """The space's orderings without those using a technique whose ``usable`` hook says it cannot run here."""
    specs = registered_techniques()
    unusable = {
        key
        for key, spec in specs.items()
        if spec.usable is not None and not spec.usable(space, param_bw, output_bw, fixed.for_technique(key))
    }
    return [o for o in space.orderings if not unusable.intersection(o.split(">"))]


def suggest_pipeline(
    trial: optuna.trial.BaseTrial,
    space: SearchSpace,
    *,
    param_bw: int,
    output_bw: int,
    num_batches_available: int,
    fixed: Fixed = Fixed(),
    default_per_channel: bool = True,
) -> Pipeline:
    """Turn a trial into a pipeline. Parameter names follow ``<technique>__<param>``.

    Each stage's config comes from its technique's ``suggest`` hook, else one parameter per declared
    dimension and ``config_class(**values)``.
    """
    orderings = usable_orderings(space, param_bw, output_bw, fixed)
    if not orderings:
        raise InvalidInputError(f"search space {space.source}: no valid ordering is left (AMP needs two or more candidates).")
    ordering = orderings[0] if len(orderings) == 1 else trial.suggest_categorical("pipeline__ordering", orderings)
    specs = registered_techniques()
    stages: list[Stage] = []
    for key in validate_ordering(ordering):
        spec = specs[key]
        ctx = SuggestContext(
            key=key,
            section=space.techniques.get(spec.space_key, Section({})),
            space=space,
            param_bw=param_bw,
            output_bw=output_bw,
            num_batches_available=num_batches_available,
            draw_param=lambda name, p: suggest_param(trial, name, p),
            fixed=fixed.for_technique(key),
            # the space's iteration counts are for 4-bit weights: fewer for wider ones (see _schedule.py)
            scale_iterations=lambda n: adaround_iterations(n, param_bw),
            early_stop_patience=ADAROUND_PATIENCE,
        )
        if spec.suggest is not None:
            config = spec.suggest(ctx)
        else:
            config = spec.build({d.name: ctx.draw(d.name) for d in spec.dimensions})
        stages.append(Stage(key, config))
    return Pipeline(_lift_before_adaround(stages))


def _lift_before_adaround(stages: list[Stage]) -> tuple[Stage, ...]:
    """An ``amp`` stage that AdaRound follows evaluates only its least noisy config within the budget.

    AdaRound re-rounds every layer AMP leaves at low precision, so what AMP hands on should remove the
    most output noise the budget allows, and when that config meets the target the trial stops there (it is
    within the budget; looking for a cheaper one would cost more evaluations). Measured in trial 0
    (BENCHMARKS 1a): AMP's most precise config then AdaRound beat AdaRound then AMP on EfficientNet-Lite0
    W4A8 and tied on Fashion-MNIST W4A8.
    """
    out = list(stages)
    for i, stage in enumerate(out):
        if stage.key == "amp" and any(s.key == "adaround" for s in out[i + 1 :]) and hasattr(stage.config, "lift_first"):
            out[i] = Stage(stage.key, dataclasses.replace(stage.config, lift_first="longest"))
    return tuple(out)


# -- running -----------------------------------------------------------------------------------------


@dataclass
class StageResult:
    """One stage of a run: its score and what it cost.

    Attributes:
        stage: the technique key.
        score: the eval score after the stage (``num_samples`` samples; ``None``: full evaluation);
            NaN (``None`` in the records, ``num_samples`` 0) when the stage was not evaluated (lazy
            stage scoring, see :mod:`._screen`).
        seconds / eval_calls / eval_samples / eval_equivalents: the stage's cost (eval-equivalents:
            samples over the full evaluation's size; a full evaluation counts 1).
        gain: score minus the previous stage's score (``None`` for the first stage).
        relative_bops: BOPs relative to the all-``w{param_bw}a{output_bw}`` model.
        within_budget: whether that cost is within ``max_relative_bops``.
        from_study: the score came from an earlier trial with the same prefix (no eval call).
        prefix_key: the hash of the pipeline prefix up to this stage.
        choice: what the stage chose when that is not in its config (selected scheme pair, AMP config).
        best: this stage produced the run's result (keep-best).
        proxy: the stage's output SQNR against FP32 (dB) when lazy scoring measured it, else ``None``.
    """

    stage: str
    score: float
    num_samples: int | None
    seconds: float
    eval_calls: int
    note: str = ""
    eval_samples: int = 0
    eval_equivalents: float = 0.0
    gain: float | None = None
    relative_bops: float | None = None
    within_budget: bool = True
    from_study: bool = False
    prefix_key: str = ""
    choice: Any = None
    best: bool = False
    proxy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if isinstance(self.score, float) and math.isnan(self.score):
            out["score"] = None  # not evaluated (lazy stage scoring, see _screen): no score in the records
        return out


@dataclass
class PipelineRun:
    """The outcome of :func:`run_pipeline`: the best stage's model and score, and every stage's record.

    ``sim``/``model``/``score`` are those of stage ``best_index`` (keep-best), which may come before the
    last stage run; ``applied`` is the pipeline prefix that produced them.
    """

    pipeline: Pipeline
    sim: QuantSim
    model: fx.GraphModule
    stages: list[StageResult]
    score: float
    completed_early: bool = False
    amp_result: Any = None
    best_index: int = -1
    within_budget: bool = True

    def __post_init__(self) -> None:
        if self.best_index == -1 and self.stages:
            self.best_index = len(self.stages) - 1

    @property
    def applied(self) -> Pipeline:
        return Pipeline(self.pipeline.stages[: self.best_index + 1])


#: ``on_stage(index, result) -> bool``: return True to finish the pipeline now (target met).
StageCallback = Callable[[int, StageResult], bool]


def run_pipeline(ctx: RunContext, pipeline: Pipeline, on_stage: StageCallback | None = None) -> PipelineRun:
    """Apply ``pipeline`` stage by stage on a copy of ``ctx.model``, evaluating after each stage.

    Techniques acting on the model (``bnf``, ``cle`` ...) transform the float model (the sim is rebuilt
    after them); ``scheme`` chooses the range setting; the others (``bc``, ``adaround``, ``amp`` ...) act on
    the sim, each as its technique's spec says. After each
    stage the sim is scored with ``ctx.evaluate(model, ctx.intermediate_num_samples)``; when that
    was a subset and the score meets the target it is confirmed on the full evaluation.
    ``on_stage`` may stop the run early (the trial then completes with the stages applied so far).

    The result is the run's **best** stage (within the cost budget first, then by score), not its
    last: a stage that lowers the score never lowers the result. The best subset-scored stage is
    confirmed on the full evaluation when it could beat every full score. Each stage records its
    cost (seconds, eval calls, samples, eval-equivalents) and gain; a stage whose pipeline prefix
    was already scored (``ctx.known``) takes its score from there.

    Raises:
        StageError: a technique failed (the message names the stage).
    """
    from ._run import run_stages

    return run_stages(ctx, pipeline, on_stage)
