"""What every plot in aq-search shares, whatever it draws: the backend check and loading the optional
libraries (matplotlib without pyplot, or plotly), and PNG rendering.

Used by :mod:`aq_search.amp` (the AMP Pareto plot) and :mod:`aq_search.viz` (the study plots).
"""

from __future__ import annotations

import functools
import io
from typing import Any

from ._constraints import parameter_error

__all__ = ["BACKENDS", "add_scatter", "check_backend", "figure_png", "matplotlib_figure", "plotly_go"]

#: The plot backends: ``"matplotlib"`` returns a ``matplotlib.figure.Figure``, ``"plotly"`` a ``plotly.graph_objects.Figure``.
BACKENDS = ("matplotlib", "plotly")


def check_backend(backend: str, who: str) -> None:
    """Raise :class:`~aq_search.InvalidInputError` unless ``backend`` is one of :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise parameter_error("backend", who, f"one of {list(BACKENDS)}", backend)


@functools.cache
def _figure_class() -> Any:
    from matplotlib.figure import Figure

    class AQFigure(Figure):
        """A matplotlib figure that shows itself as a PNG in Jupyter without pyplot or ``%matplotlib``."""

        def _repr_png_(self) -> bytes:
            return figure_png(self)

    return AQFigure


def matplotlib_figure(figsize: tuple[float, float]) -> Any:
    """A new matplotlib figure (no pyplot: safe in threads and scripts) with constrained layout.

    Raises:
        ImportError: matplotlib is not installed (the message says how to install it).
    """
    try:
        cls = _figure_class()
    except ImportError as err:
        raise ImportError("Plotting with backend='matplotlib' needs matplotlib: pip install 'aq-search[dashboard]'.") from err
    return cls(figsize=figsize, layout="constrained")


def add_scatter(fig: Any, x: Any, y: Any, name: str, *, mode: str = "markers", **style: Any) -> None:
    """Add one plotly scatter trace (``text``, ``marker``, ``line`` ... go in ``style``) to ``fig``."""
    fig.add_trace(plotly_go().Scatter(x=list(x), y=list(y), mode=mode, name=name, **style))


def plotly_go() -> Any:
    """The ``plotly.graph_objects`` module.

    Raises:
        ImportError: plotly is not installed (the message says how to install it).
    """
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
