"""A pipeline is an ordered tuple of technique configs, applied by one loop.

:func:`suggest_pipeline` is the define-by-run function that turns an Optuna trial into a
:class:`Pipeline`; replaying a trial uses the same function with ``optuna.trial.FixedTrial``.
:func:`run_pipeline` applies the stages one by one, evaluating after each.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import optuna
import torch
import torch.fx as fx
from torch import Tensor, nn

from .._data import tensor_fingerprint
from .._errors import AQSearchError, InvalidInputError
from .._numerics import signal_and_noise, sqnr_db
from ..quantsim import QuantSim
from ..techniques._config import TechniqueConfig
from ..techniques._registry import TechniqueSpec, register_technique, registered_techniques
from ._schedule import ADAROUND_PATIENCE, adaround_iterations
from ._space import FloatRange, IntRange, ParamSpec, SearchSpace, validate_ordering

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


class StageError(AQSearchError):
    """A pipeline stage failed; the trial fails with this message and the study goes on."""


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


register_technique(
    TechniqueSpec(
        key="scheme",
        config_class=SchemeConfig,
        apply=None,
        acts_on="scheme",
        description="choose the quant scheme (param/activation range setting, per-channel weights)",
        cost="data",
    )
)


@dataclass(frozen=True)
class Stage:
    """One step of a pipeline: a technique key and its config."""

    key: str
    config: Any

    def describe(self) -> str:
        c = self.config
        if isinstance(c, SchemeConfig):
            return f"scheme({c.pair}{'' if c.per_channel else ', per-tensor'})"
        if isinstance(c, SchemeSelectConfig):
            by = " by sqnr" if c.select_by == "sqnr" else ""
            return f"scheme(select{by}{'' if c.per_channel else ', per-tensor'})"
        if self.key == "adaround":
            stop = ", early stop" if getattr(c, "early_stop_patience", 0) else ""
            return f"adaround(it={c.num_iterations}, reg={c.reg_param:.3g}{stop})"
        if self.key == "amp":
            return f"amp({'/'.join(c.candidates)})"
        if self.key == "cle" and (not c.high_bias_absorption or c.replace_relu6 != "always"):
            opts = [] if c.high_bias_absorption else ["no-hba"]
            if c.replace_relu6 != "always":
                opts.append(f"relu6:{c.replace_relu6}")
            return f"cle({', '.join(opts)})"
        spec = registered_techniques().get(self.key)
        return spec.describe(c) if spec is not None and spec.generic else self.key


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
    types: dict[str, type[TechniqueConfig]] = {SchemeSelectConfig.__name__: SchemeSelectConfig}
    types.update({spec.config_class.__name__: spec.config_class for spec in registered_techniques().values()})
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


def _suggest(trial: optuna.trial.BaseTrial, name: str, spec: ParamSpec) -> Any:
    if isinstance(spec, IntRange):
        return trial.suggest_int(name, spec.low, spec.high, step=spec.step, log=spec.log)
    if isinstance(spec, FloatRange):
        return trial.suggest_float(name, spec.low, spec.high, log=spec.log)
    if len(spec.values) == 1:
        return spec.values[0]
    return trial.suggest_categorical(name, list(spec.values))


@dataclass(frozen=True)
class Fixed:
    """Settings the user fixed (they replace the space's dimensions)."""

    adaround: Any = None  # AdaRoundParams
    amp_candidates: tuple[str, ...] | None = None
    per_channel: bool | None = None


def amp_candidate_sets(space: SearchSpace, param_bw: int, output_bw: int, fixed: Fixed) -> list[tuple[str, ...]]:
    """The AMP candidate sets with ``{param_bw}``/``{output_bw}`` filled in; sets of fewer than two dropped, and
    sets whose cheapest candidate is over the space's ``max_relative_bops`` budget everywhere."""
    if fixed.amp_candidates is not None:
        return [fixed.amp_candidates]
    from ..amp import parse_candidate

    out: list[tuple[str, ...]] = []
    for s in space.amp.candidate_sets:
        filled = tuple(dict.fromkeys(c.format(param_bw=param_bw, output_bw=output_bw) for c in s))
        # a set whose cheapest candidate costs more than the budget everywhere can never give a result within it
        cheapest = min(parse_candidate(c).param_bw * parse_candidate(c).activation_bw for c in filled)
        if cheapest > space.max_relative_bops * param_bw * output_bw * (1 + 1e-9):
            logger.info("AMP candidate set %s dropped: even its cheapest candidate is over the cost budget", filled)
            continue
        if len(filled) >= 2 and filled not in out:
            out.append(filled)
    return out


def usable_orderings(space: SearchSpace, param_bw: int, output_bw: int, fixed: Fixed) -> list[str]:
    orderings = list(space.orderings)
    if not amp_candidate_sets(space, param_bw, output_bw, fixed):
        orderings = [o for o in orderings if "amp" not in o.split(">")]
    return orderings


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
    """Turn a trial into a pipeline. Parameter names follow ``<technique>__<param>``."""
    from ..amp import MixedPrecisionConfig
    from ..techniques import AdaRoundParams, BatchNormFoldConfig, BiasCorrectionConfig, CLEConfig

    orderings = usable_orderings(space, param_bw, output_bw, fixed)
    if not orderings:
        raise InvalidInputError(f"search space {space.source}: no valid ordering is left (AMP needs two or more candidates).")
    ordering = orderings[0] if len(orderings) == 1 else trial.suggest_categorical("pipeline__ordering", orderings)
    stages: list[Stage] = []
    for key in validate_ordering(ordering):
        config: Any
        if key == "scheme":
            pair = _suggest(trial, "scheme__candidate", space.scheme.candidates)
            if fixed.per_channel is not None:
                per_channel = fixed.per_channel
            else:
                per_channel = bool(_suggest(trial, "scheme__per_channel", space.scheme.per_channel))
            if pair == "select":
                config = SchemeSelectConfig(
                    candidates=space.scheme.select_candidates, per_channel=per_channel, select_by=space.scheme.select_by
                )
            else:
                config = SchemeConfig(pair=pair, per_channel=per_channel)
        elif key == "bnf":
            config = BatchNormFoldConfig()
        elif key == "cle":
            config = CLEConfig(
                high_bias_absorption=bool(_suggest(trial, "cle__high_bias_absorption", space.cle.high_bias_absorption)),
                replace_relu6=str(_suggest(trial, "cle__replace_relu6", space.cle.replace_relu6)),
            )
        elif key == "bc":
            nb = int(_suggest(trial, "bc__num_batches", space.bias_correction.num_batches))
            config = BiasCorrectionConfig(num_batches=max(1, min(nb, num_batches_available)))
        elif key == "adaround":
            if fixed.adaround is not None:
                config = fixed.adaround
            else:
                a = space.adaround
                beta_high = float(_suggest(trial, "adaround__beta_high", a.beta_high))
                beta_low = float(_suggest(trial, "adaround__beta_low", a.beta_low))
                config = AdaRoundParams(
                    num_batches=max(1, min(int(_suggest(trial, "adaround__num_batches", a.num_batches)), num_batches_available)),
                    # the space's count is for 4-bit weights: fewer iterations for wider ones (see _schedule.py)
                    num_iterations=adaround_iterations(
                        int(_suggest(trial, "adaround__num_iterations", a.num_iterations)), param_bw
                    ),
                    early_stop_patience=ADAROUND_PATIENCE,
                    reg_param=float(_suggest(trial, "adaround__reg_param", a.reg_param)),
                    beta_range=(max(beta_high, beta_low), min(beta_high, beta_low)),
                    warm_start=float(_suggest(trial, "adaround__warm_start", a.warm_start)),
                )
        elif key == "amp":
            sets = amp_candidate_sets(space, param_bw, output_bw, fixed)
            labels = ["/".join(s) for s in sets]
            label = labels[0] if len(labels) == 1 else trial.suggest_categorical("amp__candidates", labels)
            config = MixedPrecisionConfig(
                candidates=tuple(label.split("/")),
                num_samples_for_phase_1=int(_suggest(trial, "amp__num_samples_for_phase_1", space.amp.num_samples_for_phase_1)),
            )
        else:  # a generic technique: its dimensions, as the registry declares them
            spec = registered_techniques()[key]
            dims = space.techniques.get(spec.space_key, {})
            config = spec.build({d.name: _suggest(trial, f"{key}__{d.name}", dims[d.name]) for d in spec.dimensions})
        stages.append(Stage(key, config))
    return Pipeline(tuple(stages))


# -- running -----------------------------------------------------------------------------------------


@dataclass
class StageResult:
    """One stage of a run: its score and what it cost.

    Attributes:
        stage: the technique key.
        score: the eval score after the stage (``num_samples`` samples; ``None``: full evaluation).
        seconds / eval_calls / eval_samples / eval_equivalents: the stage's cost (eval-equivalents:
            samples over the full evaluation's size; a full evaluation counts 1).
        gain: score minus the previous stage's score (``None`` for the first stage).
        relative_bops: BOPs relative to the all-``w{param_bw}a{output_bw}`` model.
        within_budget: whether that cost is within ``max_relative_bops``.
        from_study: the score came from an earlier trial with the same prefix (no eval call).
        prefix_key: the hash of the pipeline prefix up to this stage.
        choice: what the stage chose when that is not in its config (selected scheme pair, AMP config).
        best: this stage produced the run's result (keep-best).
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _LRU(OrderedDict[str, Any]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_item(self, key: str) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        return None

    def put(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


def model_fingerprint(model: nn.Module) -> str:
    code = model.code if isinstance(model, fx.GraphModule) else repr(model)
    return tensor_fingerprint(code, dict(model.state_dict()))


@dataclass
class RunContext:
    """Everything a pipeline run needs: the prepared FP32 model, data, evaluation and caches."""

    model: fx.GraphModule
    dummy_input: Any
    calibration: list[Any]
    evaluate: Callable[[nn.Module, int | None], float]
    fp32_accuracy: float
    target: float
    param_bw: int
    output_bw: int
    default_pair: str = "tf_enhanced/tf_enhanced"
    default_per_channel: bool = True
    activation_symmetric: bool = False  # the deployment target's activation grid (aq_search.targets)
    forward_fn: Callable[[nn.Module, Any], Any] | None = None
    intermediate_num_samples: int | None = None
    adaround_cache: Any = None
    seed: int = 0
    leaf_modules: Sequence[Any] = ()
    model_cache: _LRU = field(default_factory=lambda: _LRU(8))
    sim_cache: _LRU = field(default_factory=lambda: _LRU(4))
    cache_hits: dict[str, int] = field(default_factory=dict)
    reference_outputs: list[Tensor] | None = None  # FP32 outputs on calibration batches (scheme selection by sqnr)
    budget: Any = None  # search._budget.Budget: results over it never meet the target
    known: Any = None  # search._prefix.KnownScores: prefix scores already in the study

    def hit(self, what: str) -> None:
        self.cache_hits[what] = self.cache_hits.get(what, 0) + 1

    def feed(self, model: nn.Module) -> None:
        from .._data import feed_batch

        for batch in self.calibration:
            if self.forward_fn is not None:
                self.forward_fn(model, batch)
            else:
                feed_batch(model, batch)

    def calibrated_sim(self, model: fx.GraphModule, pair: str, per_channel: bool) -> QuantSim:
        """A calibrated sim of ``model`` with ``pair`` schemes; calibration is cached by content."""
        key = hashlib.sha256(f"{model_fingerprint(model)}|{per_channel}|{self.param_bw}|{self.output_bw}".encode()).hexdigest()
        cached = self.sim_cache.get_item(key)
        param_scheme, act_scheme = pair.split("/")
        if cached is not None:
            self.hit("calibration")
            sim: QuantSim = copy.deepcopy(cached)
            sim.set_quant_scheme(param_scheme=param_scheme, activation_scheme=act_scheme)
            return sim
        sim = QuantSim(
            model,
            self.dummy_input,
            param_quant_scheme=param_scheme,
            activation_quant_scheme=act_scheme,
            default_param_bw=self.param_bw,
            default_output_bw=self.output_bw,
            per_channel=per_channel,
            activation_symmetric=self.activation_symmetric,
            leaf_modules=self.leaf_modules,
        )
        sim.compute_encodings(self.feed)
        self.sim_cache.put(key, copy.deepcopy(sim))
        return sim


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


def _model_stage(ctx: RunContext, model: fx.GraphModule, stage: Stage) -> fx.GraphModule:
    key = hashlib.sha256(f"{model_fingerprint(model)}|{stage.key}|{stage.config.to_dict()}".encode()).hexdigest()
    cached = ctx.model_cache.get_item(key)
    if cached is not None:
        ctx.hit(stage.key)
        return copy.deepcopy(cached)
    apply = registered_techniques()[stage.key].apply
    assert apply is not None
    out = apply(model, ctx.dummy_input, stage.config)
    ctx.model_cache.put(key, copy.deepcopy(out))
    return out


def run_pipeline(ctx: RunContext, pipeline: Pipeline, on_stage: StageCallback | None = None) -> PipelineRun:
    """Apply ``pipeline`` stage by stage on a copy of ``ctx.model``, evaluating after each stage.

    Model-level stages (``bnf``, ``cle``) transform the float model (the sim is rebuilt after them);
    ``scheme`` chooses range setting; ``bc``, ``adaround`` and ``amp`` act on the sim. After each
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
    ctx: RunContext, model: fx.GraphModule, config: SchemeSelectConfig
) -> tuple[str, QuantSim, str, float | None]:
    """The best pair, its sim, a note, and its eval score when ``select_by="eval"`` (``None`` for sqnr)."""
    best: tuple[float, str, QuantSim] | None = None
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
        else:
            score = ctx.evaluate(sim.model, ctx.intermediate_num_samples)
            scores.append(f"{pair}={score:.4f}")
        if best is None or score > best[0]:
            best = (score, pair, sim)
    assert best is not None
    note = "selected " + best[1] + " of " + ", ".join(scores)
    return best[1], best[2], note, (best[0] if config.select_by == "eval" else None)
