"""The plots people would rather look at than read: history, per-stage waterfall, Pareto, orderings, AMP.

Every function takes a study (or an :class:`~aq_search.AutoQuantResult`) and returns a figure:
``backend="matplotlib"`` a ``matplotlib.figure.Figure`` (made without pyplot, so it works in threads
and scripts; save it with ``fig.savefig``), ``backend="plotly"`` a ``plotly.graph_objects.Figure``.
Both libraries are optional (``pip install 'aq-search[dashboard]'``). Artists carry a ``gid``
(``"complete"``, ``"pruned"``, ``"front"`` ...) so the plotted data can be found again.
"""

from __future__ import annotations

import functools
import io
import math
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import optuna

from .._errors import InvalidInputError
from ._records import (
    AmpSummary,
    StageScore,
    StudySummary,
    TrialSummary,
    bops_points,
    pareto_front,
    summarize_study,
)

if TYPE_CHECKING:
    from ..amp import MixedPrecisionResult
    from ..search import AutoQuantResult

__all__ = [
    "figure_png",
    "plot_accuracy_vs_bops",
    "plot_amp_pareto",
    "plot_amp_sensitivity",
    "plot_optimization_history",
    "plot_orderings",
    "plot_stage_waterfall",
]

_BACKENDS = ("matplotlib", "plotly")
#: What the plot functions accept: a study, an :class:`~aq_search.AutoQuantResult`, or a :class:`StudySummary`.
StudyLike: TypeAlias = "optuna.Study | AutoQuantResult | StudySummary"
_UP, _DOWN, _FP32, _TARGET, _BEST, _PRUNED, _FAIL = "#2a9d8f", "#e76f51", "#2d6a4f", "#d62828", "#f4a261", "#8d99ae", "#d62828"


def _check_backend(backend: str, who: str) -> None:
    if backend not in _BACKENDS:
        raise InvalidInputError(f"The 'backend' parameter of {who} must be one of {list(_BACKENDS)}. Got {backend!r} instead.")


@functools.cache
def _figure_class() -> Any:
    from matplotlib.figure import Figure

    class AQFigure(Figure):
        """A matplotlib figure that shows itself as a PNG in Jupyter without pyplot or ``%matplotlib``."""

        def _repr_png_(self) -> bytes:
            return figure_png(self)

    return AQFigure


def _mpl(figsize: tuple[float, float]) -> Any:
    try:
        cls = _figure_class()
    except ImportError as err:
        raise ImportError("Plotting with backend='matplotlib' needs matplotlib: pip install 'aq-search[dashboard]'.") from err
    return cls(figsize=figsize, layout="constrained")


def _go() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError as err:
        raise ImportError("Plotting with backend='plotly' needs plotly: pip install 'aq-search[dashboard]'.") from err
    return go


def figure_png(fig: Any, dpi: int = 110) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _summary(study_or_result: Any) -> StudySummary:
    if isinstance(study_or_result, StudySummary):
        return study_or_result
    return summarize_study(study_or_result)


def _goal_lines_mpl(ax: Any, fp32: float, target: float, horizontal: bool = True) -> None:
    line = ax.axhline if horizontal else ax.axvline
    if math.isfinite(fp32):
        line(fp32, color=_FP32, ls=":", lw=1.2, label=f"FP32 {fp32:.4f}", gid="fp32")
    if math.isfinite(target):
        line(target, color=_TARGET, ls="--", lw=1.2, label=f"target {target:.4f}", gid="target")


def _goal_lines_go(fig: Any, fp32: float, target: float, horizontal: bool = True) -> None:
    add = fig.add_hline if horizontal else fig.add_vline
    if math.isfinite(fp32):
        where = "top left" if horizontal else "top right"
        add(fp32, line_dash="dot", line_color=_FP32, annotation_text=f"FP32 {fp32:.4f}", annotation_position=where)
    if math.isfinite(target):
        where = "bottom right" if horizontal else "bottom left"
        add(target, line_dash="dash", line_color=_TARGET, annotation_text=f"target {target:.4f}", annotation_position=where)


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
        fig.add_trace(
            go.Scatter(
                x=[t.number for t in complete],
                y=[t.value for t in complete],
                mode="markers",
                name="complete",
                text=[t.applied for t in complete],
                marker={"symbol": ["square" if t.reference_recipe else "circle" for t in complete], "size": 9},
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[t.number for t in pruned],
                y=[t.last_score for t in pruned],
                mode="markers",
                name="pruned (score when pruned)",
                text=[f"{t.pipeline}<br>pruned after stage {t.pruned_at_stage}" for t in pruned],
                marker={"symbol": "x", "color": _PRUNED, "size": 9},
            )
        )
        fig.add_trace(go.Scatter(x=best_x, y=best_y, mode="lines", name="best so far", line={"shape": "hv"}))
        if s.best is not None:
            fig.add_trace(
                go.Scatter(
                    x=[s.best.number],
                    y=[s.best.value],
                    mode="markers",
                    name=f"best: trial {s.best.number}",
                    marker={"symbol": "star", "size": 16, "color": _BEST},
                )
            )
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


# -- accuracy vs BOPs --------------------------------------------------------------------------------------


def plot_accuracy_vs_bops(study_or_result: StudyLike, *, backend: str = "matplotlib", title: str | None = None) -> Any:
    """Score vs BOPs (relative to all-W8A8) of every complete trial, with the Pareto front and the best trial.

    Mixed-precision trials spread along the BOPs axis; a uniform-bit-width space puts every trial at
    one BOPs value (``param_bw * output_bw / 64``).
    """
    _check_backend(backend, "plot_accuracy_vs_bops")
    s = _summary(study_or_result)
    points = bops_points(s.trials)
    front = pareto_front((b, v) for _, b, v in points)
    title = title or "score vs BOPs: cheaper to the left, better to the top"
    xlabel = "BOPs relative to all-W8A8"
    if backend == "plotly":
        go = _go()
        fig = go.Figure()
        fig.add_trace(
            go.Scatter(
                x=[b for _, b, _ in points],
                y=[v for _, _, v in points],
                mode="markers",
                name="trials",
                text=[f"trial {t.number}: {t.applied}" for t, _, _ in points],
                marker={"size": 9, "color": "gray"},
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[c for c, _ in front], y=[a for _, a in front], mode="lines+markers", name="Pareto front", line={"shape": "hv"}
            )
        )
        if s.best is not None and s.best.relative_bops is not None:
            fig.add_trace(
                go.Scatter(
                    x=[s.best.relative_bops],
                    y=[s.best.value],
                    mode="markers",
                    name=f"best: trial {s.best.number}",
                    marker={"symbol": "star", "size": 16, "color": _BEST},
                    text=[s.best.applied],
                )
            )
        _goal_lines_go(fig, s.fp32_accuracy, s.target_accuracy)
        fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title="score")
        return fig
    fig = _mpl((6.6, 4.4))
    ax = fig.add_subplot()
    ax.scatter(
        [b for _, b, _ in points], [v for _, _, v in points], color="0.55", s=26, label="complete trials", zorder=2, gid="trials"
    )
    for t, b, v in points:
        ax.annotate(str(t.number), (b, v), textcoords="offset points", xytext=(4, 3), fontsize="x-small", color="0.35")
    if front:
        ax.step(
            [c for c, _ in front],
            [a for _, a in front],
            where="post",
            color="tab:blue",
            marker="o",
            lw=1.5,
            label="Pareto front",
            zorder=3,
            gid="front",
        )
    if s.best is not None and s.best.relative_bops is not None:
        ax.scatter(
            [s.best.relative_bops], [s.best.value], marker="*", s=240, color=_BEST, zorder=4, label=f"best: trial {s.best.number}"
        )
    _goal_lines_mpl(ax, s.fp32_accuracy, s.target_accuracy)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("score (eval callback)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if points:
        xs = [b for _, b, _ in points]
        span = max(xs) - min(xs)
        margin = max(0.05, 0.1 * span)
        ax.set_xlim(max(0.0, min(xs) - margin), max(xs) + margin)
    ax.legend(fontsize="small", loc="lower right")
    return fig


# -- orderings ---------------------------------------------------------------------------------------------


def plot_orderings(study_or_result: StudyLike, *, backend: str = "matplotlib", title: str | None = None) -> Any:
    """Every trial's score grouped by technique ordering: which orders work on this model.

    Complete trials are dots, pruned trials crosses at their score when pruned; failed trials are
    counted in the row label.
    """
    _check_backend(backend, "plot_orderings")
    s = _summary(study_or_result)
    groups = s.by_ordering()
    names = list(groups)
    labels = []
    for name in names:
        ts = groups[name]
        failed = sum(1 for t in ts if t.state == "FAIL")
        labels.append(f"{name}  ({len(ts)}{f', {failed} failed' if failed else ''})")
    title = title or "score by technique ordering"
    rows = {name: i for i, name in enumerate(names)}
    complete = [(rows[t.ordering], t) for name in names for t in groups[name] if t.value is not None]
    pruned = [(rows[t.ordering], t) for name in names for t in groups[name] if t.state == "PRUNED" and t.last_score is not None]
    if backend == "plotly":
        go = _go()
        fig = go.Figure()
        fig.add_trace(
            go.Scatter(
                x=[t.value for _, t in complete],
                y=[labels[r] for r, _ in complete],
                mode="markers",
                name="complete",
                text=[f"trial {t.number}: {t.applied}" for _, t in complete],
                marker={"size": 10},
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[t.last_score for _, t in pruned],
                y=[labels[r] for r, _ in pruned],
                mode="markers",
                name="pruned",
                text=[f"trial {t.number}: pruned after stage {t.pruned_at_stage}" for _, t in pruned],
                marker={"symbol": "x", "size": 10, "color": _PRUNED},
            )
        )
        _goal_lines_go(fig, s.fp32_accuracy, s.target_accuracy, horizontal=False)
        fig.update_layout(title=title, xaxis_title="score", yaxis={"categoryorder": "array", "categoryarray": labels[::-1]})
        return fig
    fig = _mpl((7.0, max(2.6, 0.45 * len(names) + 1.6)))
    ax = fig.add_subplot()
    ax.scatter(
        [t.value for _, t in complete],
        [r for r, _ in complete],
        color="tab:blue",
        s=30,
        label="complete",
        zorder=3,
        gid="complete",
    )
    if pruned:
        ax.scatter(
            [t.last_score for _, t in pruned],
            [r for r, _ in pruned],
            color=_PRUNED,
            marker="x",
            s=36,
            label="pruned",
            zorder=3,
            gid="pruned",
        )
    if s.best is not None and s.best.ordering in rows:
        ax.scatter(
            [s.best.value],
            [rows[s.best.ordering]],
            marker="*",
            s=220,
            color=_BEST,
            zorder=4,
            label=f"best: trial {s.best.number}",
        )
    _goal_lines_mpl(ax, s.fp32_accuracy, s.target_accuracy, horizontal=False)
    ax.set_yticks(range(len(names)), labels, fontsize="small")
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.set_xlabel("score (eval callback)")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize="small", loc="best")
    return fig


# -- AMP sensitivity ---------------------------------------------------------------------------------------


def _amp(amp: Any) -> tuple[AmpSummary, str]:
    if isinstance(amp, AmpSummary):
        return amp, ""
    from ..amp import MixedPrecisionResult

    if isinstance(amp, MixedPrecisionResult):
        return AmpSummary.from_result(amp), ""
    s = _summary(amp)
    t = s.amp_trial()
    loaded = t.load_amp() if t is not None else None
    if t is None or loaded is None:
        raise InvalidInputError("no trial of this study ran mixed precision (AMP) with its details on this machine.")
    return loaded, f"trial {t.number}: "


def plot_amp_sensitivity(
    amp: MixedPrecisionResult | AmpSummary | optuna.Study | AutoQuantResult,
    *,
    top: int = 30,
    backend: str = "matplotlib",
    title: str | None = None,
) -> Any:
    """AMP phase 1 per layer group: how much lowering each group costs, most sensitive first.

    Args:
        amp: a :class:`~aq_search.MixedPrecisionResult`, an :class:`AmpSummary`, or a study / result
            (then the best trial that ran AMP).
        top: show at most this many (group, candidate) moves.

    Orange bars are the moves the chosen config made; each bar says how much of the BOPs the move
    saves.
    """
    _check_backend(backend, "plot_amp_sensitivity")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise InvalidInputError(f"The 'top' parameter of plot_amp_sensitivity must be a positive int. Got {top!r} instead.")
    summary, prefix = _amp(amp)
    entries = sorted(summary.sensitivity, key=lambda e: -e.sensitivity)[:top]
    chosen = [summary.group_config.get(e.group) == e.candidate for e in entries]
    names = [f"{e.group} \u2192 {e.candidate}" for e in entries]
    xlabel = "accuracy drop when lowered alone" if summary.phase1_metric == "eval" else "output noise/signal when lowered alone"
    title = title or (
        f"{prefix}AMP sensitivity: {len(summary.sensitivity)} move(s) over {summary.n_groups} group(s), "
        f"chosen config {summary.relative_bops:.3f}x BOPs"
    )
    if backend == "plotly":
        go = _go()
        fig = go.Figure(
            go.Bar(
                x=[e.sensitivity for e in entries],
                y=names,
                orientation="h",
                marker={"color": [_BEST if c else "#457b9d" for c in chosen]},
                text=[f"saves {e.cost_saved:.1%}" for e in entries],
                hovertext=[f"score {e.score:.4f}" for e in entries],
            )
        )
        fig.update_layout(
            title=title, xaxis_title=xlabel, yaxis={"autorange": "reversed"}, height=max(300, 22 * len(entries) + 150)
        )
        return fig
    fig = _mpl((7.4, max(2.5, 0.26 * len(entries) + 1.4)))
    ax = fig.add_subplot()
    y = list(range(len(entries)))
    ax.barh(
        y,
        [e.sensitivity for e in entries],
        color=[_BEST if c else "#457b9d" for c in chosen],
        gid="sensitivity",
    )
    for i, e in enumerate(entries):
        ax.annotate(
            f"saves {e.cost_saved:.1%}",
            (max(e.sensitivity, 0.0), i),
            textcoords="offset points",
            xytext=(3, -3),
            fontsize="x-small",
        )
    ax.set_yticks(y, names, fontsize="x-small")
    ax.set_ylim(len(entries) - 0.5, -0.5)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize="medium")
    ax.grid(alpha=0.3, axis="x")
    from matplotlib.patches import Patch

    ax.legend(
        handles=[Patch(color=_BEST, label="lowered in the chosen config"), Patch(color="#457b9d", label="kept")],
        fontsize="x-small",
        loc="lower right",
    )
    return fig


def plot_amp_pareto(amp: MixedPrecisionResult | AmpSummary, *, backend: str = "matplotlib", title: str | None = None) -> Any:
    """The AMP accuracy-vs-BOPs front of one trial (:func:`aq_search.plot_pareto` for stored summaries too)."""
    from typing import cast

    from ..amp import plot_pareto

    summary = amp if isinstance(amp, AmpSummary) else AmpSummary.from_result(amp)
    title = title or f"AMP front: {summary.n_groups} groups, {summary.n_eval_calls} eval calls"
    return plot_pareto(cast(Any, summary), backend=backend, title=title)
