"""What every plot shares: backend choice and loading (matplotlib without pyplot, or plotly), colours,
the FP32/target goal lines and PNG rendering.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, TypeAlias

import optuna

from ._records import StudySummary, TrialSummary, summarize_study

if TYPE_CHECKING:
    from ..search import AutoQuantResult

#: What the plot functions accept: a study, an :class:`~aq_search.AutoQuantResult`, or a :class:`StudySummary`.
StudyLike: TypeAlias = "optuna.Study | AutoQuantResult | StudySummary"
_UP, _DOWN, _FP32, _TARGET, _BEST, _PRUNED, _FAIL = "#2a9d8f", "#e76f51", "#2d6a4f", "#d62828", "#f4a261", "#8d99ae", "#d62828"


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


def _best_star_go(go: Any, fig: Any, x: float, best: TrialSummary, text: list[str] | None = None) -> None:
    """The best trial as an orange star (plotly)."""
    extra = {} if text is None else {"text": text}
    marker = {"symbol": "star", "size": 16, "color": _BEST}
    fig.add_trace(go.Scatter(x=[x], y=[best.value], mode="markers", name=f"best: trial {best.number}", marker=marker, **extra))


def _goal_lines_go(fig: Any, fp32: float, target: float, horizontal: bool = True) -> None:
    add = fig.add_hline if horizontal else fig.add_vline
    if math.isfinite(fp32):
        where = "top left" if horizontal else "top right"
        add(fp32, line_dash="dot", line_color=_FP32, annotation_text=f"FP32 {fp32:.4f}", annotation_position=where)
    if math.isfinite(target):
        where = "bottom right" if horizontal else "bottom left"
        add(target, line_dash="dash", line_color=_TARGET, annotation_text=f"target {target:.4f}", annotation_position=where)
