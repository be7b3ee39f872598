"""Deprecated alias of :mod:`aq_search.viz` (the old name shadowed the standard library's ``inspect``).

Import from :mod:`aq_search.viz` instead; this module re-exports the same names and will be removed.
"""

import warnings

from ..viz import (
    ARTIFACTS_DIR,
    REPORT_FILE,
    AmpSummary,
    DashboardServer,
    StageScore,
    StudySummary,
    TrialSummary,
    annotate_study,
    artifact_store,
    dashboard_storage,
    figure_png,
    make_dashboard_server,
    pareto_front,
    plot_accuracy_vs_bops,
    plot_amp_pareto,
    plot_amp_sensitivity,
    plot_optimization_history,
    plot_orderings,
    plot_stage_waterfall,
    publish_study,
    record_trial,
    render_report,
    study_note,
    summarize_study,
    summarize_trial,
    write_report,
)

__all__ = [
    "ARTIFACTS_DIR",
    "REPORT_FILE",
    "AmpSummary",
    "DashboardServer",
    "StageScore",
    "StudySummary",
    "TrialSummary",
    "annotate_study",
    "artifact_store",
    "dashboard_storage",
    "figure_png",
    "make_dashboard_server",
    "pareto_front",
    "plot_accuracy_vs_bops",
    "plot_amp_pareto",
    "plot_amp_sensitivity",
    "plot_optimization_history",
    "plot_orderings",
    "plot_stage_waterfall",
    "publish_study",
    "record_trial",
    "render_report",
    "study_note",
    "summarize_study",
    "summarize_trial",
    "write_report",
]

warnings.warn(
    "aq_search.inspect is deprecated and will be removed; import from aq_search.viz instead "
    "(the old name shadowed the standard library's inspect module).",
    DeprecationWarning,
    stacklevel=2,
)
