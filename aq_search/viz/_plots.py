"""The plots people would rather look at than read: history, per-stage waterfall, Pareto, orderings, AMP.

Every function takes a study (or an :class:`~aq_search.AutoQuantResult`) and returns a figure:
``backend="matplotlib"`` a ``matplotlib.figure.Figure`` (made without pyplot, so it works in threads
and scripts; save it with ``fig.savefig``), ``backend="plotly"`` a ``plotly.graph_objects.Figure``.
Both libraries are optional (``pip install 'aq-search[dashboard]'``). Artists carry a ``gid``
(``"complete"``, ``"pruned"``, ``"front"`` ...) so the plotted data can be found again.
"""

from __future__ import annotations

from .._plotting import figure_png
from ._plots_front import plot_accuracy_vs_bops, plot_amp_pareto, plot_amp_sensitivity, plot_orderings
from ._plots_study import plot_optimization_history, plot_stage_waterfall

__all__ = [
    "figure_png",
    "plot_accuracy_vs_bops",
    "plot_amp_pareto",
    "plot_amp_sensitivity",
    "plot_optimization_history",
    "plot_orderings",
    "plot_stage_waterfall",
]
