"""Accuracy-vs-cost plots: accuracy vs BOPs, orderings, AMP sensitivity and the AMP Pareto front."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna

from .._constraints import parameter_error
from .._errors import InvalidInputError
from .._plotting import add_scatter
from .._plotting import check_backend as _check_backend
from .._plotting import matplotlib_figure as _mpl
from .._plotting import plotly_go as _go
from ._plot_backend import _BEST, _PRUNED, StudyLike, _best_star_go, _goal_lines_go, _goal_lines_mpl, _summary
from ._records import AmpSummary, bops_points, pareto_front

if TYPE_CHECKING:
    from ..amp import MixedPrecisionResult
    from ..search import AutoQuantResult


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
            _best_star_go(go, fig, s.best.relative_bops, s.best, text=[s.best.applied])
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
        add_scatter(
            fig,
            (t.value for _, t in complete),
            (labels[r] for r, _ in complete),
            "complete",
            text=[f"trial {t.number}: {t.applied}" for _, t in complete],
            marker={"size": 10},
        )
        add_scatter(
            fig,
            (t.last_score for _, t in pruned),
            (labels[r] for r, _ in pruned),
            "pruned",
            text=[f"trial {t.number}: pruned after stage {t.pruned_at_stage}" for _, t in pruned],
            marker={"symbol": "x", "size": 10, "color": _PRUNED},
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
        raise parameter_error("top", "plot_amp_sensitivity", "a positive int", top)
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
