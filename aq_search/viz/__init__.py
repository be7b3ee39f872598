"""Inspecting a search: optuna-dashboard recording, plots, and the HTML report.

* Plots (matplotlib figures, or plotly with ``backend="plotly"``): :func:`plot_optimization_history`,
  :func:`plot_stage_waterfall`, :func:`plot_accuracy_vs_bops`, :func:`plot_orderings`,
  :func:`plot_amp_sensitivity`, :func:`plot_amp_pareto`.
* :func:`write_report`: ``results_dir/report.html``, self-contained (written after every search).
* Dashboard: :func:`record_trial` (artifacts and AMP attributes per trial), :func:`annotate_study`
  (the study note and custom plots), :func:`make_dashboard_server` (what ``aq-search dashboard`` runs).
* Reading a study: :func:`summarize_study` -> :class:`StudySummary` of :class:`TrialSummary`.

Example:
    >>> import optuna
    >>> from aq_search.viz import plot_stage_waterfall, summarize_study, write_report
    >>> study = optuna.load_study(study_name=None, storage="sqlite:///aq_results/study.db")  # doctest: +SKIP
    >>> summarize_study(study).best.applied                                                    # doctest: +SKIP
    'bnf > cle > scheme(tf_enhanced/tf_enhanced) > adaround(it=500, reg=0.01)'
    >>> plot_stage_waterfall(study).savefig("stages.png")                                      # doctest: +SKIP
    >>> write_report(study, "aq_results")                                                      # doctest: +SKIP
"""

from ._dashboard import (
    ARTIFACTS_DIR,
    DashboardServer,
    annotate_study,
    artifact_store,
    dashboard_storage,
    make_dashboard_server,
    record_trial,
    study_note,
)
from ._plots import (
    figure_png,
    plot_accuracy_vs_bops,
    plot_amp_pareto,
    plot_amp_sensitivity,
    plot_optimization_history,
    plot_orderings,
    plot_stage_waterfall,
)
from ._publish import attach, publish_study
from ._records import (
    AmpSummary,
    StageScore,
    StudySummary,
    TrialSummary,
    pareto_front,
    summarize_study,
    summarize_trial,
)
from ._report import REPORT_FILE, render_report, write_report

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

attach()  # the dashboard records, artifacts and report of every search (search itself imports no viz)
