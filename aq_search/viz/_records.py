"""Typed views of what a study recorded: per-trial stage scores, BOPs, AMP details.

Everything here reads the study (user attributes, intermediate values) and the files a trial wrote
under ``results_dir``; nothing needs the model, so a study loaded from storage is enough.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from .._errors import InvalidInputError
from .._numerics import pareto_front as _pareto_front
from ..amp._types import AmpOutcome, ParetoPoint, SensitivityEntry

if TYPE_CHECKING:
    from ..amp import MixedPrecisionResult
    from ..search import AutoQuantResult

__all__ = [
    "AmpSummary",
    "StageScore",
    "StudySummary",
    "TrialSummary",
    "pareto_front",
    "stage_scores",
    "summarize_study",
    "summarize_trial",
]

logger = logging.getLogger(__name__)

#: File (in a trial's folder) holding its :class:`AmpSummary`.
AMP_FILE = "amp.json"
#: Groups shown in the AMP sensitivity chart (a trial's ``amp_sensitivity.png`` and the report's).
AMP_SENSITIVITY_TOP = 30


@dataclass(frozen=True)
class StageScore:
    """One stage of a trial's pipeline as the trial recorded it.

    Attributes:
        index: position in the pipeline (0-based; the Optuna step of the intermediate value).
        stage: the technique key (``scheme``, ``bnf``, ``cle``, ``bc``, ``adaround``, ``amp``).
        label: the stage with its settings, e.g. ``adaround(it=500, reg=0.01)``.
        score: the eval score after the stage.
        num_samples: samples it was scored on (``None``: the full evaluation).
        seconds: wall time of the stage (its evaluation included).
        eval_calls: eval callback calls the stage made.
        note: what the stage said about itself (e.g. which scheme it selected).
    """

    index: int
    stage: str
    label: str
    score: float
    num_samples: int | None
    seconds: float
    eval_calls: int
    note: str = ""


@dataclass(frozen=True)
class AmpSummary(AmpOutcome):
    """What an AMP stage found, in a form that survives the process: JSON-able, no model inside.

    It has the figures of :class:`~aq_search.MixedPrecisionResult` (both are an
    :class:`~aq_search.amp.AmpOutcome`), so the plots take either.
    """

    phase1_metric: str
    n_groups: int
    message: str = ""

    @property
    def lowered_groups(self) -> tuple[str, ...]:
        """Groups the chosen config moved below the highest candidate (``"group=candidate"``)."""
        chosen = self.pareto_point_of_choice()
        return chosen.lowered if chosen is not None else ()

    def pareto_point_of_choice(self) -> ParetoPoint | None:
        """The evaluated config closest to the chosen one (same cost and accuracy)."""
        for p in self.evaluated:
            if math.isclose(p.relative_cost, self.relative_cost, rel_tol=1e-9) and math.isclose(
                p.accuracy, self.accuracy, rel_tol=1e-9
            ):
                return p
        return None

    @classmethod
    def from_result(cls, result: MixedPrecisionResult) -> AmpSummary:
        return cls(
            accuracy=float(result.accuracy),
            fp32_accuracy=float(result.fp32_accuracy),
            target_accuracy=float(result.target_accuracy),
            baseline_accuracy=float(result.baseline_accuracy),
            relative_bops=float(result.relative_bops),
            relative_size=float(result.relative_size),
            cost=str(result.cost),
            phase1_metric=str(result.phase1_metric),
            n_eval_calls=int(result.n_eval_calls),
            n_groups=len(result.groups),
            group_config=dict(result.group_config),
            sensitivity=tuple(SensitivityEntry(*e) for e in result.sensitivity),
            pareto=tuple(ParetoPoint(p.relative_cost, p.accuracy, tuple(p.lowered)) for p in result.pareto),
            evaluated=tuple(ParetoPoint(p.relative_cost, p.accuracy, tuple(p.lowered)) for p in result.evaluated),
            message=str(result.message),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "fp32_accuracy": self.fp32_accuracy,
            "target_accuracy": self.target_accuracy,
            "baseline_accuracy": self.baseline_accuracy,
            "relative_bops": self.relative_bops,
            "relative_size": self.relative_size,
            "cost": self.cost,
            "phase1_metric": self.phase1_metric,
            "n_eval_calls": self.n_eval_calls,
            "n_groups": self.n_groups,
            "group_config": dict(self.group_config),
            "sensitivity": [list(e) for e in self.sensitivity],
            "pareto": [[p.relative_cost, p.accuracy, list(p.lowered)] for p in self.pareto],
            "evaluated": [[p.relative_cost, p.accuracy, list(p.lowered)] for p in self.evaluated],
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AmpSummary:
        try:
            return cls(
                accuracy=float(data["accuracy"]),
                fp32_accuracy=float(data["fp32_accuracy"]),
                target_accuracy=float(data["target_accuracy"]),
                baseline_accuracy=float(data["baseline_accuracy"]),
                relative_bops=float(data["relative_bops"]),
                relative_size=float(data["relative_size"]),
                cost=str(data["cost"]),
                phase1_metric=str(data.get("phase1_metric", "eval")),
                n_eval_calls=int(data["n_eval_calls"]),
                n_groups=int(data["n_groups"]),
                group_config={str(k): str(v) for k, v in dict(data["group_config"]).items()},
                sensitivity=tuple(
                    SensitivityEntry(str(g), str(c), float(s), float(v), float(cs)) for g, c, s, v, cs in data["sensitivity"]
                ),
                pareto=tuple(ParetoPoint(float(c), float(a), tuple(lo)) for c, a, lo in data["pareto"]),
                evaluated=tuple(ParetoPoint(float(c), float(a), tuple(lo)) for c, a, lo in data["evaluated"]),
                message=str(data.get("message", "")),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidInputError(f"not an AMP summary ({type(err).__name__}: {err})") from err

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AmpSummary:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def most_sensitive(self, n: int = 3) -> tuple[SensitivityEntry, ...]:
        """The ``n`` (group, candidate) moves that cost the most accuracy (highest sensitivity first)."""
        return tuple(sorted(self.sensitivity, key=lambda e: -e.sensitivity)[:n])


@dataclass(frozen=True)
class TrialSummary:
    """One trial as the study recorded it.

    Attributes:
        number: the trial number.
        state: ``COMPLETE``, ``PRUNED``, ``FAIL``, ``RUNNING`` or ``WAITING``.
        value: the objective (full evaluation) of a complete trial, else ``None``.
        pipeline: the pipeline the trial planned (``scheme(select) > bnf > cle > ...``).
        applied: the stages it applied (shorter when it met the target early or was pruned).
        ordering: the technique ordering id (``scheme>bnf>cle>adaround``).
        stages: the stages it ran, with scores.
        relative_bops: BOPs relative to all-W8A8 (complete trials).
        eval_calls / wall_seconds: its cost.
        pruned_at_stage: ``"3: scheme(tf/tf)"`` for a pruned trial.
        error: the message of a failed trial.
        stopped: why it stopped without running (another trial met the target).
        reference_recipe: whether it replays AIMET's recipe.
        params: the Optuna parameters.
        amp_path: where its :class:`AmpSummary` is (trials that ran AMP).
        relative_bops_requested: BOPs relative to the all-``w{param_bw}a{output_bw}`` model asked for.
        within_budget: whether that is within ``max_relative_bops`` (a result over it never meets the target).
        best_stage_label: which stage produced the trial's value (keep-best), e.g. ``stage 2 of 4 (cle)``.
        eval_equivalents: its evaluation cost in full evaluations.
        redraw_of: the trial whose parameters it ran again with another AdaRound draw (``adaround_redraw``).
    """

    number: int
    state: str
    value: float | None
    pipeline: str
    applied: str
    ordering: str
    stages: tuple[StageScore, ...]
    relative_bops: float | None
    eval_calls: int
    wall_seconds: float | None
    pruned_at_stage: str | None
    error: str | None
    stopped: str | None
    reference_recipe: bool
    params: Mapping[str, Any] = field(default_factory=dict)
    amp_path: str | None = None
    relative_bops_requested: float | None = None
    within_budget: bool = True
    best_stage_label: str = ""
    eval_equivalents: float | None = None
    redraw_of: int | None = None

    @property
    def last_score(self) -> float | None:
        """The score after the last stage it ran (the pruned-at score for a pruned trial)."""
        if self.value is not None:
            return self.value
        return self.stages[-1].score if self.stages else None

    @property
    def outcome(self) -> str:
        """A short account of how the trial ended, for tables."""
        if self.error:
            return f"failed: {self.error}"
        if self.pruned_at_stage:
            return f"pruned after stage {self.pruned_at_stage}"
        if self.stopped:
            return self.stopped
        if self.state == "COMPLETE" and self.applied != self.pipeline:
            return "target met before the last stage"
        return self.state.lower()

    def load_amp(self) -> AmpSummary | None:
        """The trial's AMP summary, or ``None`` when it ran no AMP or the file is not on this machine."""
        if not self.amp_path:
            return None
        try:
            return AmpSummary.load(self.amp_path)
        except (OSError, ValueError) as err:
            logger.info("AMP details of trial %d not readable (%s): %s", self.number, self.amp_path, err)
            return None


@dataclass(frozen=True)
class StudySummary:
    """A study as aq-search recorded it: settings, every trial, the best one.

    Attributes:
        study_name: the Optuna study name.
        fp32_accuracy / target_accuracy / allowed_accuracy_drop: the goal.
        param_bw / output_bw: default bit-widths.
        trials: every trial, by number.
        best: the best complete trial (highest value, earliest on ties), or ``None``.
        target_met_by: number of the trial that met the target, if any.
        n_eval_calls: eval callback calls in the study (FP32 evaluation included).
        search_space: the space the study ran with (a dict, as in the YAML files).
        results_dir: the folder recorded by the study (absolute), if any.
    """

    study_name: str
    fp32_accuracy: float
    target_accuracy: float
    allowed_accuracy_drop: float
    param_bw: int | None
    output_bw: int | None
    trials: tuple[TrialSummary, ...]
    best: TrialSummary | None
    target_met_by: int | None
    n_eval_calls: int
    search_space: Mapping[str, Any]
    results_dir: str | None

    @property
    def target_met(self) -> bool:
        b = self.best
        return b is not None and b.value is not None and b.value >= self.target_accuracy and b.within_budget

    def count(self, state: str) -> int:
        return sum(1 for t in self.trials if t.state == state)

    def by_ordering(self) -> dict[str, list[TrialSummary]]:
        """Trials grouped by technique ordering, in order of first appearance."""
        out: dict[str, list[TrialSummary]] = {}
        for t in self.trials:
            if t.ordering:
                out.setdefault(t.ordering, []).append(t)
        return out

    def amp_trial(self) -> TrialSummary | None:
        """The trial whose AMP result to show: the best trial if it ran AMP, else the best-scoring AMP trial."""
        if self.best is not None and self.best.amp_path:
            return self.best
        with_amp = [t for t in self.trials if t.amp_path and t.last_score is not None]
        return max(with_amp, key=lambda t: (t.last_score or -math.inf, -t.number), default=None)


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def stage_scores(pipeline: str, raw: Sequence[Mapping[str, Any]]) -> tuple[StageScore, ...]:
    """:class:`StageScore` s from a pipeline string and its ``stage_scores`` records (``StageResult.to_dict()``)."""
    labels = str(pipeline).split(" > ")
    out = []
    for i, s in enumerate(raw):
        if not isinstance(s, Mapping):
            continue
        score = _float(s.get("score"))
        if score is None:
            continue
        samples = s.get("num_samples")
        out.append(
            StageScore(
                index=i,
                stage=str(s.get("stage", "")),
                label=labels[i] if i < len(labels) and labels[i] else str(s.get("stage", "")),
                score=score,
                num_samples=int(samples) if isinstance(samples, (int, float)) else None,
                seconds=_float(s.get("seconds")) or 0.0,
                eval_calls=int(s.get("eval_calls", 0) or 0),
                note=str(s.get("note", "") or ""),
            )
        )
    return tuple(out)


def _stages(trial: FrozenTrial) -> tuple[StageScore, ...]:
    raw = trial.user_attrs.get("stage_scores")
    labels = str(trial.user_attrs.get("pipeline", "")).split(" > ")
    if not isinstance(raw, list):  # older trials: intermediate values only
        return tuple(
            StageScore(
                i, labels[i] if i < len(labels) else f"stage {i + 1}", labels[i] if i < len(labels) else "", v, None, 0.0, 0
            )
            for i, v in sorted(trial.intermediate_values.items())
        )
    return stage_scores(str(trial.user_attrs.get("pipeline", "")), raw)


def summarize_trial(trial: FrozenTrial) -> TrialSummary:
    """A :class:`TrialSummary` of one Optuna trial."""
    a = trial.user_attrs
    pipeline = str(a.get("pipeline", ""))
    value = trial.value if trial.state == TrialState.COMPLETE else None
    return TrialSummary(
        number=trial.number,
        state=trial.state.name,
        value=_float(value) if value is not None else None,
        pipeline=pipeline,
        applied=str(a.get("pipeline_applied", pipeline)),
        ordering=str(a.get("ordering", trial.params.get("pipeline__ordering", ""))),
        stages=_stages(trial),
        relative_bops=_float(a.get("relative_bops")),
        eval_calls=int(a.get("eval_calls", 0) or 0),
        wall_seconds=_float(a.get("wall_seconds")),
        pruned_at_stage=str(a["pruned_at_stage"]) if a.get("pruned_at_stage") else None,
        error=str(a["error"]) if a.get("error") else None,
        stopped=str(a["stopped"]) if a.get("stopped") else None,
        reference_recipe=bool(a.get("reference_recipe", False)),
        params=dict(trial.params),
        amp_path=str(a["amp_path"]) if a.get("amp_path") else None,
        relative_bops_requested=_float(a.get("relative_bops_requested")),
        within_budget=a.get("within_budget", True) is not False,
        best_stage_label=str(a.get("best_stage_label", "") or ""),
        eval_equivalents=_float(a.get("eval_equivalents")),
        redraw_of=_redraw_of(a.get("adaround_redraw")),
    )


def _redraw_of(record: Any) -> int | None:
    of = record.get("of") if isinstance(record, Mapping) else None
    return int(of) if isinstance(of, int) else None


def _as_study(study_or_result: Any) -> optuna.Study:
    if isinstance(study_or_result, optuna.Study):
        return study_or_result
    study = getattr(study_or_result, "study", None)
    if isinstance(study, optuna.Study):
        return study
    raise InvalidInputError(
        f"Expected an optuna.Study or an aq_search.AutoQuantResult. Got {type(study_or_result).__name__} instead."
    )


def summarize_study(study_or_result: optuna.Study | AutoQuantResult) -> StudySummary:
    """Read an aq-search study (or a result's study) into a :class:`StudySummary`.

    Example:
        >>> s = summarize_study(result)                           # doctest: +SKIP
        >>> s.best.pipeline, s.best.value, s.count("PRUNED")      # doctest: +SKIP
    """
    study = _as_study(study_or_result)
    attrs = study.user_attrs
    trials = tuple(summarize_trial(t) for t in study.get_trials(deepcopy=False))
    complete = [t for t in trials if t.value is not None]
    best = max(complete, key=lambda t: (t.within_budget, t.value, -t.number)) if complete else None
    fp32 = _float(attrs.get("fp32_accuracy"))
    target = _float(attrs.get("target_accuracy"))
    drop = _float(attrs.get("allowed_accuracy_drop"))
    if drop is None and fp32 is not None and target is not None:
        drop = fp32 - target
    met = attrs.get("target_met_by")
    return StudySummary(
        study_name=study.study_name,
        fp32_accuracy=fp32 if fp32 is not None else math.nan,
        target_accuracy=target if target is not None else math.nan,
        allowed_accuracy_drop=drop if drop is not None else math.nan,
        param_bw=int(attrs["param_bw"]) if "param_bw" in attrs else None,
        output_bw=int(attrs["output_bw"]) if "output_bw" in attrs else None,
        trials=trials,
        best=best,
        target_met_by=int(met) if met is not None else None,
        n_eval_calls=int(attrs.get("fp32_eval_calls", 1 if fp32 is not None else 0)) + sum(t.eval_calls for t in trials),
        search_space=dict(attrs.get("search_space") or {}),
        results_dir=str(attrs["results_dir"]) if attrs.get("results_dir") else None,
    )


def pareto_front(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both cost (lower is better) and accuracy (higher is better).

    Returns them by increasing cost (so accuracy strictly increases too); duplicates are kept once.

    Example:
        >>> pareto_front([(0.5, 0.9), (0.25, 0.8), (0.5, 0.7), (1.0, 0.9), (0.75, 0.95)])
        [(0.25, 0.8), (0.5, 0.9), (0.75, 0.95)]
    """
    return _pareto_front(set(points), key=lambda p: p)


def bops_points(trials: Sequence[TrialSummary]) -> list[tuple[TrialSummary, float, float]]:
    """``(trial, relative BOPs, value)`` of the complete trials that recorded BOPs."""
    return [(t, t.relative_bops, t.value) for t in trials if t.value is not None and t.relative_bops is not None]
