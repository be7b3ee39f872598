"""Suite-wide settings: the test seed, and CI turning the skips of required system packages into failures.

``AQ_TEST_SEED`` (default 0) seeds every random draw the suite makes: the global RNGs (torch, numpy,
``random``) are reset from it before each test, and tests that draw from their own generator take it
from the ``aq_seed`` fixture. The suite must pass with any value; CI runs it with the default.

With ``CI`` set (``CI=1`` or ``CI=true``; ``.ci/run`` exports ``CI=1``) a test skipped because chromium
or PostgreSQL is missing fails instead: CI installs them, so such a skip means CI tested less than it says.
"""

from __future__ import annotations

import os
import random
from collections.abc import Generator
from typing import Any

import numpy as np
import pytest
import torch

__all__ = ["REQUIRED_IN_CI", "in_ci", "test_seed"]

pytest_plugins = ["pytester"]

#: skip reasons (lower case) that are failures in CI: the system packages ``.ci/run`` installs
REQUIRED_IN_CI = ("chromium", "postgresql", "psycopg2")


def test_seed() -> int:
    """``AQ_TEST_SEED`` as an int (default 0); a clear error for anything else."""
    raw = os.environ.get("AQ_TEST_SEED", "0").strip() or "0"
    try:
        return int(raw)
    except ValueError:
        raise pytest.UsageError(f"AQ_TEST_SEED must be an integer, got {raw!r}") from None


test_seed.__test__ = False  # type: ignore[attr-defined]  # not a test, despite its name


def in_ci() -> bool:
    """True when the ``CI`` environment variable says so (``1``, ``true``, ``yes``; any case)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def aq_seed() -> int:
    """The suite's seed (``AQ_TEST_SEED``, default 0): derive every generator a test makes from it."""
    return test_seed()


@pytest.fixture(autouse=True)
def _seed_global_rngs(aq_seed: int) -> None:
    torch.manual_seed(aq_seed)
    np.random.seed(aq_seed % 2**32)
    random.seed(aq_seed)


def pytest_report_header(config: pytest.Config) -> str:
    required = ", ".join(REQUIRED_IN_CI)
    return f"aq-search: AQ_TEST_SEED={test_seed()}, CI={'yes' if in_ci() else 'no'} (skips naming {required} fail in CI)"


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr: Any = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.skipped and in_ci():
        reason = _skip_reason(report)
        if any(word in reason.lower() for word in REQUIRED_IN_CI):
            report.outcome = "failed"
            report.longrepr = f"skipped in CI, where it must run (.ci/run installs chromium and postgresql): {reason}"
