"""results_dir/report.html: written by optimize(), self-contained, with the best trial's stages and figures."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
from pathlib import Path

import optuna
import pytest

from aq_search import AutoQuant, AutoQuantResult
from aq_search.examples.digits import DigitsCase
from aq_search.viz import render_report, write_report

from .conftest import fast_space, synthetic_amp, synthetic_study

pytest.importorskip("matplotlib")


def figure_png(page: str, fig_id: str) -> bytes:
    """The PNG inlined in ``<figure id=fig_id>``."""
    match = re.search(rf'<figure id="{fig_id}"><img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)
    assert match, f"no inlined PNG figure {fig_id!r} in the report"
    return base64.b64decode(match.group(1))


def assert_self_contained(page: str) -> None:
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "the report must not load anything from the network"
    assert not re.search(r"@import|url\(", page)


def test_optimize_writes_the_report(digits_result: AutoQuantResult) -> None:
    path = Path(digits_result.results_dir) / "report.html"
    assert path.is_file()
    page = path.read_text(encoding="utf-8")
    assert_self_contained(page)
    best = digits_result.study.trials[digits_result.best_trial]
    # the verdict and the best trial's stages with their scores
    assert ("Target met." if digits_result.target_met else "Target not met.") in page
    assert f"Stages of the best pipeline (trial {best.number})" in page
    for stage in best.user_attrs["stage_scores"]:
        assert f"{stage['score']:.4f}" in page
    assert str(digits_result.pipeline).replace(">", "&gt;") in page
    # the best trial's figures, as real PNGs
    for fig_id in ("best-trial-stages", "optimization-history", "accuracy-vs-bops", "orderings"):
        assert figure_png(page, fig_id).startswith(b"\x89PNG\r\n\x1a\n")
    # a row per trial, the best one marked, pruned ones saying where
    for t in digits_result.study.trials:
        row = re.search(rf"<tr class='([^']*)' id='trial-{t.number}'>(.*?)</tr>", page)
        assert row, f"trial {t.number} missing from the table"
        assert t.state.name in row.group(1)
        if t.number == digits_result.best_trial:
            assert "best" in row.group(1)
        if t.state == optuna.trial.TrialState.PRUNED:
            assert "pruned after stage" in row.group(2)
    # the settings used
    assert "W3A6" in page and "orderings:" in page and "Allowed accuracy drop" in page
    amp_trials = [t for t in digits_result.study.trials if t.user_attrs.get("amp_path")]
    if amp_trials:
        assert figure_png(page, "amp-sensitivity").startswith(b"\x89PNG")


def test_report_from_a_study_loaded_from_storage(digits_result: AutoQuantResult, tmp_path: Path) -> None:
    summary = json.loads((Path(digits_result.results_dir) / "best" / "summary.json").read_text())
    storage = f"sqlite:///{Path(digits_result.results_dir) / 'study.db'}"
    study = optuna.load_study(study_name=summary["study_name"], storage=storage)
    path = write_report(study, tmp_path)
    assert path == tmp_path / "report.html"
    page = path.read_text(encoding="utf-8")
    assert f"Stages of the best pipeline (trial {digits_result.best_trial})" in page
    assert figure_png(page, "best-trial-stages").startswith(b"\x89PNG")
    # without results_dir it goes where the study says its results are
    assert render_report(study).count("id='trial-") == len(study.trials)


def test_report_reuses_the_charts_the_trial_recorded(digits_result: AutoQuantResult, tmp_path: Path) -> None:
    """The report inlines the best trial's own stages.png (and the AMP trial's charts) instead of drawing them
    again; a chart older than the trial's encodings (left over from another study) is drawn afresh."""
    folder = Path(digits_result.results_dir) / "trials" / f"trial_{digits_result.best_trial:04d}"
    page = (Path(digits_result.results_dir) / "report.html").read_text(encoding="utf-8")
    assert figure_png(page, "best-trial-stages") == (folder / "stages.png").read_bytes()
    amp_section = re.search(r"Mixed precision \(trial (\d+)\)", page)
    if amp_section:
        amp_dir = Path(digits_result.study.trials[int(amp_section.group(1))].user_attrs["amp_path"]).parent
        assert figure_png(page, "amp-sensitivity") == (amp_dir / "amp_sensitivity.png").read_bytes()
        assert figure_png(page, "amp-pareto") == (amp_dir / "amp_pareto.png").read_bytes()

    summary = json.loads((Path(digits_result.results_dir) / "best" / "summary.json").read_text())
    storage = f"sqlite:///{Path(digits_result.results_dir) / 'study.db'}"
    study = optuna.load_study(study_name=summary["study_name"], storage=storage)
    other = tmp_path / "trials" / folder.name
    other.mkdir(parents=True)
    marker = b"\x89PNG\r\n\x1a\n not a chart of this study"
    (other / "stages.png").write_bytes(marker)
    (other / "encodings.json").write_text("{}")
    anchor = (other / "encodings.json").stat().st_mtime_ns
    os.utime(other / "stages.png", ns=(anchor - 10**9, anchor - 10**9))  # older than the encodings: stale
    fresh = figure_png(write_report(study, tmp_path).read_text(encoding="utf-8"), "best-trial-stages")
    assert fresh != marker and fresh.startswith(b"\x89PNG")
    os.utime(other / "stages.png", ns=(anchor + 10**9, anchor + 10**9))  # written after them: the trial's own
    assert figure_png(write_report(study, tmp_path).read_text(encoding="utf-8"), "best-trial-stages") == marker


def test_report_shows_pruned_and_failed_trials(tmp_path: Path) -> None:
    amp_path = tmp_path / "amp.json"
    amp_path.write_text(json.dumps(synthetic_amp().to_dict()))
    page = write_report(synthetic_study(amp_path=amp_path), tmp_path).read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "Target met." in page and "0.9450" in page
    assert re.search(r"<tr class='PRUNED' id='trial-1'>.*pruned after stage 2: cle.*</tr>", page)
    assert re.search(r"<tr class='FAIL' id='trial-2'>.*failed: stage 2 \(cle\) failed: RuntimeError: boom.*</tr>", page)
    assert re.search(r"<tr class='COMPLETE' id='trial-0'>.*\(AIMET recipe\).*</tr>", page)
    assert "100 samples" in page  # a stage scored on a subset says so
    assert "Mixed precision (trial 3)" in page and "4 groups, 2 lowered" in page
    assert figure_png(page, "amp-pareto").startswith(b"\x89PNG")


def test_report_without_plots_still_has_the_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import aq_search.viz._plots as plots

    def no_matplotlib(*args: object, **kwargs: object) -> bytes:
        raise ImportError("no matplotlib here")

    monkeypatch.setattr(plots, "figure_png", no_matplotlib)
    page = write_report(synthetic_study(), tmp_path).read_text(encoding="utf-8")
    assert "data:image/png" not in page
    assert "<h2>Not shown</h2>" in page and "matplotlib is not installed" in page
    assert "id='trial-4'" in page


def test_inspection_failures_never_fail_the_search(
    digits: DigitsCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import aq_search.viz._dashboard as dashboard
    import aq_search.viz._publish as publish

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(dashboard, "_record_trial", broken)
    monkeypatch.setattr(publish, "write_report", broken)
    space = fast_space(orderings=["bnf>scheme", "bnf>cle>scheme"], max_trials=2, replay_reference=False)
    aq = AutoQuant(
        digits.model,
        digits.dummy_input,
        digits.calibration_batches,
        digits.eval_callback,
        param_bw=4,
        output_bw=4,  # W4A4 per-tensor with no drop allowed: neither trial meets the target, so both run
        per_channel=False,
        results_dir=tmp_path / "aq",
        search_space=space,
        seed=0,
    )
    with caplog.at_level(logging.WARNING, logger="aq_search"):
        result = aq.optimize(allowed_accuracy_drop=0.0)
    assert [t.state for t in result.study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert not (tmp_path / "aq" / "report.html").exists()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("recording it for the dashboard" in m and "disk full" in m for m in messages) == 2
    assert all(any("disk full" in e for e in t.user_attrs["side_effect_errors"]) for t in result.study.trials)
    assert any("could not write the HTML report" in m for m in messages)
