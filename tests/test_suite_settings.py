"""The suite's own contract: AQ_TEST_SEED reaches the global RNGs, and CI fails on skips of required packages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

CONFTEST = Path(__file__).with_name("conftest.py")

SKIPPING = """
import pytest

@pytest.mark.skipif(True, reason="needs a headless browser: apt-get install -y chromium")
def test_browser():
    pass

@pytest.fixture
def db():
    pytest.skip("no PostgreSQL server binaries (initdb)")

def test_db(db):
    pass

@pytest.mark.skipif(True, reason="the onnx extra is not installed")
def test_optional():
    pass
"""


def test_global_rngs_are_seeded_from_aq_test_seed(aq_seed: int) -> None:
    drawn = torch.rand(3)
    torch.manual_seed(aq_seed)
    assert torch.equal(drawn, torch.rand(3))


@pytest.mark.parametrize("ci", ["", "0", "1", "true"])
def test_ci_turns_skips_of_required_packages_into_failures(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                                          ci: str) -> None:  # fmt: skip
    monkeypatch.setenv("CI", ci)
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8").replace('pytest_plugins = ["pytester"]', ""))
    pytester.makepyfile(test_skipping=SKIPPING)
    result = pytester.runpytest_inprocess("-rs", "-p", "no:cacheprovider")
    if ci in ("1", "true"):
        result.assert_outcomes(errors=2, skipped=1)  # failed at setup: reported as errors
        result.stdout.fnmatch_lines(["*skipped in CI, where it must run*chromium*", "*SKIPPED*onnx extra*"])
    else:
        result.assert_outcomes(skipped=3)
        result.stdout.fnmatch_lines(["*SKIPPED*chromium*"])


def test_a_bad_seed_is_a_usage_error(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AQ_TEST_SEED", "zero")
    pytester.makeconftest(CONFTEST.read_text(encoding="utf-8").replace('pytest_plugins = ["pytester"]', ""))
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert "AQ_TEST_SEED must be an integer, got 'zero'" in result.stderr.str() + result.stdout.str()
