"""What every plot shares: backend choice and loading (matplotlib without pyplot, or plotly), colours,
the FP32/target goal lines and PNG rendering.
"""

from __future__ import annotations

import functools
import io
import math
from typing import TYPE_CHECKING, Any, TypeAlias

import optuna

from .._errors import InvalidInputError
from ._records import (
    StudySummary,
    summarize_study,
)

if TYPE_CHECKING:
    from ..search import AutoQuantResult

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
