"""The end-of-search hook: the study note and plots for the dashboard, then the HTML report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ._dashboard import annotate_study
from ._report import write_report

if TYPE_CHECKING:
    from ..search import AutoQuantResult

__all__ = ["publish_study"]

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
