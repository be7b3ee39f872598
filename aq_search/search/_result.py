"""The outcome of a search: the best model saved under ``results_dir/best`` and summarized."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
import torch
import yaml
from torch import nn

from .._errors import AQSearchError
from ..quantsim import QuantSim
from ._costs import study_costs
from ._objective import TrialObjective, within, write_atomic
from ._observers import result_callbacks
from ._pipeline import Pipeline, RunContext, StageResult
from ._redraw import REDRAW_ATTR

if TYPE_CHECKING:
    from ._autoquant import AutoQuant

__all__ = ["RESULTS_VERSION", "AutoQuantResult", "finish"]

logger = logging.getLogger(__name__)

RESULTS_VERSION = 1


@dataclass(frozen=True)
class AutoQuantResult:
    """What :meth:`AutoQuant.optimize` returns: the best model scored, and what was tried.

    Attributes:
        model: the fake-quantized model (``sim.model``), callable like the original.
        sim: the :class:`~aq_search.QuantSim` behind it (encodings, quantizers).
        accuracy: its score from the eval callback (full evaluation).
        fp32_accuracy: the FP32 model's score.
        target_accuracy: ``fp32_accuracy - allowed_accuracy_drop``.
        target_met: whether ``accuracy >= target_accuracy``.
        encoding_path: the best model's encodings JSON.
        pipeline: the techniques that produced it, in order.
        study: the Optuna study (all trials, per-stage values, user attributes).
        n_eval_calls: eval callback calls in the study (all trials and workers, plus FP32).
        n_trials: finished trials in the study.
        best_trial: number of the trial that produced the model.
        message: a one-paragraph account of what was tried and how it went.
        results_dir: the folder holding the model, encodings, pipeline and summary.
        stage_results: every stage the best trial ran (cost, gain, which one won: ``best``).
        n_eval_equivalents: evaluation cost of the study in full evaluations (subset calls count
            ``num_samples / eval_size``).
        relative_bops: the model's BOPs relative to the all-``w{param_bw}a{output_bw}`` model.
        within_budget: whether that is at most ``max_relative_bops`` (``target_met`` needs it).
        best_stage: which stage of the best trial produced the model (1-based; keep-best).
    """

    model: nn.Module
    sim: QuantSim
    accuracy: float
    fp32_accuracy: float
    target_accuracy: float
    target_met: bool
    encoding_path: str
    pipeline: Pipeline
    study: optuna.Study
    n_eval_calls: int
    n_trials: int
    best_trial: int
    message: str
    results_dir: str
    stage_results: tuple[StageResult, ...] = field(default=())
    n_eval_equivalents: float = math.nan
    relative_bops: float | None = None
    within_budget: bool = True
    best_stage: int = 0

    def export_onnx(self, path: str | os.PathLike[str], **kwargs: Any) -> Any:
        """Write the best model as ONNX (QDQ + FP32 + encodings) and validate it; see :func:`aq_search.export_onnx`."""
        from ..export import export_onnx

        return export_onnx(self.sim, kwargs.pop("dummy_input", None), path, **kwargs)

    def __repr__(self) -> str:
        return (
            f"AutoQuantResult(accuracy={self.accuracy:.4f}, fp32_accuracy={self.fp32_accuracy:.4f}, "
            f"target_met={self.target_met}, pipeline='{self.pipeline}', n_trials={self.n_trials}, "
            f"n_eval_calls={self.n_eval_calls}, relative_bops={self.relative_bops})"
        )


def finish(aq: AutoQuant, study: optuna.Study, ctx: RunContext, runner: TrialObjective) -> AutoQuantResult:
    """The best trial's model rebuilt (or kept), saved to ``results_dir/best``, and summarized."""
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None]
    n_finished = sum(t.state.is_finished() for t in study.trials)  # not the enqueued trials a met target left waiting
    if not complete:
        raise AQSearchError(
            "no trial completed, so there is no quantized model to return; the failed trials' messages are in "
            f"the study ({aq._study_label(study)}): " + "; ".join(str(t.user_attrs.get("error", "")) for t in study.trials[-3:])
        )
    best = max(complete, key=lambda t: (within(t), t.value, -t.number))
    run = runner.best_run if runner.best_number == best.number else None
    if run is None:  # the best trial ran in another process (or an earlier run): rebuild it here
        run = aq._replay(best, ctx)
        if not math.isclose(run.score, float(best.value or 0.0), rel_tol=0.0, abs_tol=1e-6):
            logger.warning(
                "replaying trial %d here scored %.6f, not the %.6f it recorded (different machine, threads or "
                "library versions?); saving the replayed model, reporting the recorded score",
                best.number,
                run.score,
                best.value,
            )
    assert best.value is not None
    out = aq.results_dir / "best"
    out.mkdir(parents=True, exist_ok=True)
    encoding_path = out / "encodings.json"
    # several workers may share results_dir: write each file whole, then rename it into place
    write_atomic(encoding_path, run.sim.export_encodings)
    write_atomic(out / "model_state.pt", lambda p: torch.save(run.sim.model.state_dict(), p))
    pipeline_text = yaml.safe_dump(run.applied.to_dict(), sort_keys=False)
    write_atomic(out / "pipeline.yaml", lambda p: p.write_text(pipeline_text, encoding="utf-8"))
    costs = study_costs(study.trials, study.user_attrs)
    n_eval = int(costs["eval_calls"])
    is_within = within(best)
    relative = aq.budget.relative(run.sim)
    cost_text = aq.budget.describe(relative)
    target_met = best.value >= ctx.target and is_within
    won = str(best.user_attrs.get("best_stage_label", "")) or "its last stage"
    tried = sorted({str(t.user_attrs.get("pipeline", "")) for t in study.trials if t.user_attrs.get("pipeline")})
    if target_met:
        message = (
            f"Target met: {best.value:.4f} >= {ctx.target:.4f} (FP32 {ctx.fp32_accuracy:.4f}) by trial {best.number} "
            f"({won}) with {run.applied} at {cost_text}, after {n_finished} trial(s), {n_eval} eval call(s) "
            f"and {costs['eval_equivalents']:.2f} eval-equivalent(s)."
        )
    elif best.value >= ctx.target:
        message = (
            f"Target not met: the best model scored {best.value:.4f} >= {ctx.target:.4f} but costs {cost_text} "
            f"(allowed: {aq.budget.max_relative_bops:g}x; pass max_relative_bops= to allow more). Returning trial "
            f"{best.number} ({won}: {run.applied})."
        )
    else:
        message = (
            f"Target not met: the best of {n_finished} trial(s) scored {best.value:.4f} < {ctx.target:.4f} "
            f"(FP32 {ctx.fp32_accuracy:.4f}); returning trial {best.number}, {won} ({run.applied}, {cost_text}). "
            f"Tried: {'; '.join(tried[:12])}"
            f"{' ...' if len(tried) > 12 else ''}. Consider more trials, a larger allowed drop, higher bit-widths "
            "or mixed precision candidates."
        )
    summary = {
        "results_version": RESULTS_VERSION,
        "aq_search_version": _version(),
        "study_name": study.study_name,
        "storage": aq._study_label(study),
        "fp32_accuracy": ctx.fp32_accuracy,
        "target_accuracy": ctx.target,
        "accuracy": best.value,
        "target_met": target_met,
        "best_trial": best.number,
        "best_stage": int(best.user_attrs.get("best_stage", len(run.applied.stages))),
        "best_stage_label": won,
        "adaround_redraw": best.user_attrs.get(REDRAW_ATTR),  # {of, draw, seed, miss} when the best trial is a redraw
        "pipeline": str(run.applied),
        "n_trials": n_finished,
        "n_eval_calls": n_eval,
        "n_eval_equivalents": costs["eval_equivalents"],
        "eval_samples": costs["eval_samples"],
        "trial_seconds": costs["seconds"],
        "cost_by_stage": costs["by_stage"],
        "requested": aq.budget.requested,
        "relative_bops_requested": None if relative is None else round(relative, 4),
        "max_relative_bops": aq.budget.max_relative_bops,
        "within_budget": is_within,
        "param_bw": aq.param_bw,
        "output_bw": aq.output_bw,
        "dummy_input_shapes": _shapes(aq.dummy_input),
        "leaf_modules": [m if isinstance(m, str) else f"{m.__module__}.{m.__qualname__}" for m in aq.leaf_modules],
        "message": message,
    }
    write_atomic(out / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=1), encoding="utf-8"))
    logger.info(message)
    result = AutoQuantResult(
        model=run.sim.model,
        sim=run.sim,
        accuracy=float(best.value),
        fp32_accuracy=ctx.fp32_accuracy,
        target_accuracy=ctx.target,
        target_met=target_met,
        encoding_path=str(encoding_path),
        pipeline=run.applied,
        study=study,
        n_eval_calls=n_eval,
        n_trials=n_finished,
        best_trial=best.number,
        message=message,
        results_dir=str(aq.results_dir),
        stage_results=tuple(run.stages),
        n_eval_equivalents=float(costs["eval_equivalents"]),
        relative_bops=None if relative is None else round(relative, 4),
        within_budget=is_within,
        best_stage=int(best.user_attrs.get("best_stage", len(run.applied.stages))),
    )
    for callback in result_callbacks():  # aq_search.viz: dashboard note and plots, results_dir/report.html
        callback(result)
    return result


def _shapes(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return list(x.shape)
    if isinstance(x, (tuple, list)):
        return [_shapes(v) for v in x]
    if isinstance(x, Mapping):
        return {k: _shapes(v) for k, v in x.items()}
    return repr(x)


def _version() -> str:
    from .._version import __version__

    return __version__
