"""Plot a mixed-precision Pareto front (matplotlib PNG, or plotly HTML); both libraries are optional."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .._plotting import add_scatter, check_backend, matplotlib_figure, plotly_go

if TYPE_CHECKING:
    from ._types import MixedPrecisionResult

__all__ = ["plot_pareto"]


def _labels(result: MixedPrecisionResult) -> tuple[str, str]:
    what = "BOPs" if result.cost == "bops" else "model size"
    return f"{what} relative to the all-highest config", "accuracy"


def _matplotlib(result: MixedPrecisionResult, path: str | None, title: str) -> Any:
    fig = matplotlib_figure((6.4, 4.2))
    ax = fig.add_subplot()
    xlabel, ylabel = _labels(result)
    if result.evaluated:
        ax.scatter(
            [p.relative_cost for p in result.evaluated],
            [p.accuracy for p in result.evaluated],
            color="0.6",
            s=18,
            label="evaluated",
            zorder=2,
        )
    ax.plot(
        [p.relative_cost for p in result.pareto],
        [p.accuracy for p in result.pareto],
        "o-",
        color="tab:blue",
        label="Pareto front",
        zorder=3,
    )
    ax.axhline(result.fp32_accuracy, color="tab:green", ls=":", lw=1, label=f"FP32 {result.fp32_accuracy:.4f}")
    ax.axhline(result.target_accuracy, color="tab:red", ls="--", lw=1, label=f"target {result.target_accuracy:.4f}")
    ax.scatter(
        [result.relative_cost],
        [result.accuracy],
        marker="*",
        s=220,
        color="tab:orange",
        zorder=4,
        label=f"chosen ({result.relative_cost:.3f}, {result.accuracy:.4f})",
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower left")
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def _plotly(result: MixedPrecisionResult, path: str | None, title: str) -> Any:
    go = plotly_go()
    xlabel, ylabel = _labels(result)

    def hover(points: Any) -> list[str]:
        return [p.lowered[-1] if p.lowered else "baseline" for p in points]

    fig = go.Figure()
    add_scatter(
        fig,
        (p.relative_cost for p in result.evaluated),
        (p.accuracy for p in result.evaluated),
        "evaluated",
        marker={"color": "gray"},
        text=hover(result.evaluated),
    )
    add_scatter(
        fig,
        (p.relative_cost for p in result.pareto),
        (p.accuracy for p in result.pareto),
        "Pareto front",
        mode="lines+markers",
        text=hover(result.pareto),
    )
    fig.add_trace(
        go.Scatter(
            x=[result.relative_cost],
            y=[result.accuracy],
            mode="markers",
            name="chosen",
            marker={"symbol": "star", "size": 16, "color": "orange"},
        )
    )
    fig.add_hline(y=result.target_accuracy, line_dash="dash", line_color="red", annotation_text="target")
    fig.add_hline(y=result.fp32_accuracy, line_dash="dot", line_color="green", annotation_text="FP32")
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title=ylabel, xaxis={"autorange": "reversed"})
    if path is not None:
        fig.write_html(path)
    return fig


def plot_pareto(
    result: MixedPrecisionResult,
    path: str | os.PathLike[str] | None = None,
    *,
    backend: str = "matplotlib",
    title: str | None = None,
) -> Any:
    """Plot the accuracy-vs-cost front of a :class:`~aq_search.amp.MixedPrecisionResult`.

    Args:
        result: what :func:`~aq_search.choose_mixed_precision` returned.
        path: where to write the figure (matplotlib: any format it knows, e.g. ``.png``; plotly:
            ``.html``); ``None`` writes nothing.
        backend: ``"matplotlib"`` (returns a ``matplotlib.figure.Figure``) or ``"plotly"`` (a
            ``plotly.graph_objects.Figure``).
        title: the figure title.

    Raises:
        ImportError: the backend's library is not installed.
    """
    check_backend(backend, "plot_pareto")
    title = title or f"Mixed precision: {len(result.groups)} groups, {result.n_eval_calls} eval calls"
    where = None if path is None else os.fspath(path)
    return _matplotlib(result, where, title) if backend == "matplotlib" else _plotly(result, where, title)
