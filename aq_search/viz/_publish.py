"""What viz attaches to the search: per trial, the dashboard records and artifacts; at the end, the study
note and plots for the dashboard, then the HTML report (see :mod:`aq_search.search._observers`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._side_effects import record_side_effect_error
from ._dashboard import annotate_study, record_artifact_store, record_trial
from ._report import write_report

if TYPE_CHECKING:
    from ..search import AutoQuantResult

__all__ = ["attach", "publish_study", "record_trial_callback"]

logger = logging.getLogger(__name__)


def publish_study(result: AutoQuantResult) -> Path | None:
    """Save the dashboard note and plots and write ``results_dir/report.html``; never raises.

    Returns:
        The report's path, or ``None`` when it could not be written (a warning says why).
    """
    annotate_study(result, result.results_dir)
    try:
        path = write_report(result, result.results_dir)
    except Exception as err:  # inspection must never fail the search
        logger.warning("could not write the HTML report: %s: %s", type(err).__name__, err)
        logger.debug("writing the report failed", exc_info=True)
        return None
    logger.info("report: %s", path)
    return path


def record_trial_callback(trial: Any, run: Any, objective: Any) -> None:
    """The search's trial callback: :func:`record_trial` into the AutoQuant's results folder and artifact
    store (a custom ``artifact_store=`` is also noted in the folder, for the dashboard); never raises."""
    aq = objective.aq
    record_trial(
        trial,
        run,
        aq.results_dir,
        fp32_accuracy=objective.ctx.fp32_accuracy,
        target_accuracy=objective.ctx.target,
        store=aq.artifact_store,
    )
    if aq.artifact_store is not None:
        try:
            record_artifact_store(aq.results_dir, aq.artifact_store)
        except (OSError, ValueError) as err:  # inspection must never fail a trial: recorded on it
            record_side_effect_error(trial, "noting the artifact store for the dashboard", err)


def attach() -> None:
    """Attach :func:`record_trial_callback` and :func:`publish_study` to every search (``import aq_search`` does)."""
    from ..search._observers import add_result_callback, add_trial_callback

    add_trial_callback(record_trial_callback)
    add_result_callback(publish_study)
