"""Study plots over trials: the optimization history and the per-stage waterfall."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import optuna

from .._errors import InvalidInputError
from .._plotting import add_scatter
from .._plotting import check_backend as _check_backend
from .._plotting import matplotlib_figure as _mpl
from .._plotting import plotly_go as _go
from ._plot_backend import _BEST, _DOWN, _FAIL, _PRUNED, _UP, StudyLike, _best_star_go, _goal_lines_go, _goal_lines_mpl, _summary
from ._records import StageScore, StudySummary, TrialSummary

if TYPE_CHECKING:
    pass


# -- optimization history ---------------------------------------------------------------------------------


def plot_optimization_history(study_or_result: StudyLike, *, backend: str = "matplotlib", title: str | None = None) -> Any:
    """Score of every trial by trial number, the best so far, FP32 and the target.

    Complete trials are dots (the AIMET reference recipe a square), pruned trials crosses at the
    score of the stage they were pruned after, failed trials red marks on the axis.
    """
    _check_backend(backend, "plot_optimization_history")
    s = _summary(study_or_result)
    complete = [t for t in s.trials if t.value is not None]
    pruned = [t for t in s.trials if t.state == "PRUNED" and t.last_score is not None]
    failed = [t for t in s.trials if t.state == "FAIL"]
    best_x: list[int] = []
    best_y: list[float] = []
    for t in complete:
        assert t.value is not None
        if not best_y or t.value > best_y[-1]:
            best_x.append(t.number)
            best_y.append(t.value)
    if s.trials and best_x and best_x[-1] != s.trials[-1].number:
        best_x.append(s.trials[-1].number)
        best_y.append(best_y[-1])
    title = title or f"{s.study_name}: {len(s.trials)} trial(s)"
    if backend == "plotly":
        go = _go()
        fig = go.Figure()
        symbols = ["square" if t.reference_recipe else "circle" for t in complete]
        add_scatter(
            fig,
            (t.number for t in complete),
            (t.value for t in complete),
            "complete",
            text=[t.applied for t in complete],
            marker={"symbol": symbols, "size": 9},
        )
        add_scatter(
            fig,
            (t.number for t in pruned),
            (t.last_score for t in pruned),
            "pruned (score when pruned)",
            text=[f"{t.pipeline}<br>pruned after stage {t.pruned_at_stage}" for t in pruned],
            marker={"symbol": "x", "color": _PRUNED, "size": 9},
        )
        fig.add_trace(go.Scatter(x=best_x, y=best_y, mode="lines", name="best so far", line={"shape": "hv"}))
        if s.best is not None:
            _best_star_go(go, fig, s.best.number, s.best)
        _goal_lines_go(fig, s.fp32_accuracy, s.target_accuracy)
        fig.update_layout(title=title, xaxis_title="trial", yaxis_title="score")
        return fig
    fig = _mpl((7.0, 4.2))
    ax = fig.add_subplot()
    ref = [t for t in complete if t.reference_recipe]
    rest = [t for t in complete if not t.reference_recipe]
    ax.scatter(
        [t.number for t in rest], [t.value for t in rest], color="tab:blue", s=28, label="complete", zorder=3, gid="complete"
    )
    if ref:
        ax.scatter(
            [t.number for t in ref],
            [t.value for t in ref],
            color="tab:blue",
            marker="s",
            s=40,
            label="AIMET recipe (reference)",
            zorder=3,
            gid="reference",
        )
    if pruned:
        ax.scatter(
            [t.number for t in pruned],
            [t.last_score for t in pruned],
            color=_PRUNED,
            marker="x",
            s=36,
            label="pruned (score when pruned)",
            zorder=3,
            gid="pruned",
        )
    if best_x:
        ax.step(best_x, best_y, where="post", color="tab:blue", alpha=0.5, lw=1.2, label="best so far", gid="best_so_far")
    if s.best is not None:
        ax.scatter(
            [s.best.number], [s.best.value], marker="*", s=220, color=_BEST, zorder=4, label=f"best: trial {s.best.number}"
        )
    _goal_lines_mpl(ax, s.fp32_accuracy, s.target_accuracy)
    if failed:
        ax.scatter(
            [t.number for t in failed],
            [0.02] * len(failed),
            transform=ax.get_xaxis_transform(),
            marker="v",
            color=_FAIL,
            s=40,
            label="failed",
            gid="failed",
            clip_on=False,
        )
    ax.set_xlabel("trial")
    ax.set_ylabel("score (eval callback)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    if s.trials:
        ax.set_xlim(-0.5, max(t.number for t in s.trials) + 0.5)
    return fig


# -- per-stage waterfall -----------------------------------------------------------------------------------


def _pick_trial(s: StudySummary, trial: Any) -> TrialSummary:
    if trial is None:
        if s.best is None:
            raise InvalidInputError("the study has no complete trial; pass trial=<number> to plot one that ran stages.")
        return s.best
    number = trial.number if isinstance(trial, (optuna.trial.FrozenTrial, TrialSummary)) else trial
    if isinstance(number, bool) or not isinstance(number, int):
        raise InvalidInputError(f"The 'trial' parameter must be a trial number or a FrozenTrial. Got {trial!r} instead.")
    for t in s.trials:
        if t.number == number:
            return t
    raise InvalidInputError(f"the study has no trial {number} (it has {len(s.trials)}).")


def _wrap(label: str, width: int = 16) -> str:
    return "\n".join(textwrap.wrap(label, width, break_long_words=True, break_on_hyphens=False)) or label


def waterfall_figure(
    stages: Sequence[StageScore],
    fp32: float,
    target: float,
    *,
    backend: str = "matplotlib",
    title: str = "",
) -> Any:
    """The waterfall of one trial's stages (used for the per-trial charts and by :func:`plot_stage_waterfall`)."""
    labels = ["FP32", *(s.label or s.stage for s in stages)]
    scores = [s.score for s in stages]
    prev = [fp32, *scores[:-1]]
    if backend == "plotly":
        go = _go()
        start = fp32 if math.isfinite(fp32) else (scores[0] if scores else 0.0)
        fig = go.Figure(
            go.Waterfall(
                x=labels,
                measure=["absolute"] + ["relative"] * len(stages),
                y=[start] + [s - p if math.isfinite(p) else s for s, p in zip(scores, prev)],
                text=[f"{start:.4f}"]
                + [f"{s.score:.4f}" + ("" if s.num_samples is None else f" ({s.num_samples} samples)") for s in stages],
                textposition="outside",
                increasing={"marker": {"color": _UP}},
                decreasing={"marker": {"color": _DOWN}},
                totals={"marker": {"color": "#adb5bd"}},
            )
        )
        values = [v for v in [fp32, target, *scores] if math.isfinite(v)]
        if values:
            lo, hi = min(values), max(values)
            pad = max(0.02, 0.08 * (hi - lo))
            fig.update_yaxes(range=[lo - pad, hi + pad])
        _goal_lines_go(fig, math.nan, target)
        fig.update_layout(title=title, yaxis_title="score after the stage", showlegend=False)
        return fig
    fig = _mpl((max(5.0, 1.3 * len(labels) + 1.5), 4.2))
    ax = fig.add_subplot()
    values = [v for v in [fp32, target, *scores] if math.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = max(0.02, 0.08 * (hi - lo))
    floor = lo - pad
    if math.isfinite(fp32):
        ax.bar([0], [fp32 - floor], bottom=[floor], color="#adb5bd", width=0.6, gid="fp32_bar")
        ax.annotate(f"{fp32:.4f}", (0, fp32), textcoords="offset points", xytext=(0, 3), ha="center", fontsize="small")
    min_height = (hi - lo + 2 * pad) * 0.004
    for i, (s, p) in enumerate(zip(stages, prev), start=1):
        base = p if math.isfinite(p) else floor
        up = s.score >= base
        bottom, height = min(base, s.score), max(abs(s.score - base), min_height)
        ax.bar(
            [i],
            [height],
            bottom=[bottom],
            color=_UP if up else _DOWN,
            width=0.6,
            hatch="//" if s.num_samples is not None else None,
            edgecolor="white" if s.num_samples is not None else None,
            gid=f"stage{i - 1}",
        )
        ax.plot([i - 1.3, i - 0.3], [base, base], color="0.4", lw=0.8, ls="-")
        shown = f"{s.score:.4f}" + ("" if s.num_samples is None else f"\n({s.num_samples} samples)")
        ax.annotate(shown, (i, max(base, s.score)), textcoords="offset points", xytext=(0, 3), ha="center", fontsize="small")
    _goal_lines_mpl(ax, math.nan, target)
    ax.set_xticks(range(len(labels)), [_wrap(lb) for lb in labels], fontsize="small")
    ax.set_ylim(floor, hi + 2.5 * pad)
    ax.set_ylabel("score after the stage")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    if math.isfinite(target):
        ax.legend(fontsize="small", loc="lower left")
    return fig


def plot_stage_waterfall(
    study_or_result: StudyLike,
    trial: int | optuna.trial.FrozenTrial | None = None,
    *,
    backend: str = "matplotlib",
    title: str | None = None,
) -> Any:
    """How each stage of one trial's pipeline moved the score, from FP32 (default: the best trial).

    Green bars raised the score, red ones lowered it; hatched bars were scored on a subset of the
    evaluation (``num_samples``), the rest on all of it.
    """
    _check_backend(backend, "plot_stage_waterfall")
    s = _summary(study_or_result)
    t = _pick_trial(s, trial)
    if not t.stages:
        raise InvalidInputError(f"trial {t.number} recorded no stage scores ({t.outcome}).")
    title = title or f"trial {t.number} ({t.state.lower()}): {t.last_score:.4f}"
    return waterfall_figure(t.stages, s.fp32_accuracy, s.target_accuracy, backend=backend, title=title)
