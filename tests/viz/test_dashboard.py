"""What optuna-dashboard shows, checked in storage and end to end in a real headless browser."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import download_artifact, get_all_artifact_meta

from aq_search import AutoQuantResult, InvalidInputError
from aq_search._cli import main
from aq_search.viz import AmpSummary, dashboard_storage, study_note
from aq_search.viz._dashboard import amp_user_attrs

from .conftest import synthetic_amp

optuna_dashboard = pytest.importorskip("optuna_dashboard")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_trials_carry_artifacts_and_amp_attributes(digits_result: AutoQuantResult, tmp_path: Path) -> None:
    study = digits_result.study
    store = optuna.artifacts.FileSystemArtifactStore(Path(digits_result.results_dir) / "artifacts")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete
    amp_recorded = 0
    for t in complete:
        metas = {m.filename: m for m in get_all_artifact_meta(t, storage=study._storage)}
        assert {"encodings.json", "stages.png"} <= set(metas), (t.number, sorted(metas))
        assert metas["stages.png"].mimetype == "image/png"
        copy = tmp_path / f"enc_{t.number}.json"
        download_artifact(artifact_store=store, file_path=str(copy), artifact_id=metas["encodings.json"].artifact_id)
        assert copy.read_bytes() == Path(t.user_attrs["encodings_path"]).read_bytes()
        for key in ("pipeline", "stage_scores", "eval_calls", "wall_seconds", "relative_bops"):
            assert key in t.user_attrs
        # a trial whose AMP stage was scored by an earlier trial with the same prefix reuses that AMP config
        # (no AMP run, no new AMP records); the trial that ran it carries them
        amp_ran = any(s["stage"] == "amp" and not s["from_study"] for s in t.user_attrs["stage_scores"])
        if "amp" in t.user_attrs["pipeline_applied"] and amp_ran:
            amp_recorded += 1
            assert {"amp_pareto.png", "amp_sensitivity.png", "amp.json"} <= set(metas)
            assert 0 < t.user_attrs["amp_relative_bops"] <= 1
            assert t.user_attrs["amp_groups"] >= t.user_attrs["amp_lowered"] >= 0
            # empty when AMP measured no sensitivity (it lowered nothing); else up to three "group→candidate" moves
            sensitive = t.user_attrs["amp_most_sensitive"]
            assert isinstance(sensitive, str)
            if t.user_attrs["amp_lowered"] > 0:
                assert 1 <= sensitive.count("\u2192") <= 3, sensitive
            assert sensitive == "" or sensitive.count("\u2192") == len(sensitive.split(", ")), sensitive
    assert amp_recorded, "no trial ran and kept an AMP stage: the records above were not checked"


def test_amp_most_sensitive_is_empty_exactly_when_amp_measured_nothing() -> None:
    measured = amp_user_attrs(synthetic_amp())
    assert measured["amp_lowered"] == 2 and measured["amp_groups"] == 4 and measured["amp_relative_bops"] == 0.7
    assert measured["amp_most_sensitive"] == "a\u2192w4a8 (0.048), c\u2192w4a8 (0.018), b\u2192w4a8 (0.001)"
    # every group at its highest candidate missed the target: AMP returned it, lowering nothing, measuring nothing
    data = synthetic_amp().to_dict()
    data.update(
        accuracy=0.93,
        baseline_accuracy=0.93,
        relative_bops=1.0,
        group_config={g: "w8a8" for g in "abcd"},
        sensitivity=[],
        pareto=[[1.0, 0.93, []]],
        evaluated=[[1.0, 0.93, []]],
    )
    nothing = amp_user_attrs(AmpSummary.from_dict(data))
    assert nothing["amp_lowered"] == 0 and nothing["amp_most_sensitive"] == ""
    assert nothing["amp_groups"] == 4 and nothing["amp_relative_bops"] == 1.0


def test_study_note_and_custom_plots(digits_result: AutoQuantResult) -> None:
    study = digits_result.study
    note = optuna_dashboard.get_note(study)
    assert note == study_note(study, digits_result.results_dir)
    best = study.trials[digits_result.best_trial]
    assert f"Best accuracy | {best.value:.4f} (trial {best.number})" in note
    assert f"FP32 accuracy | {digits_result.fp32_accuracy:.4f}" in note
    assert f"`{digits_result.pipeline}`" in note
    assert f"Eval calls | {digits_result.n_eval_calls}" in note
    assert "## What won" in note and "## By technique ordering" in note
    keys = study._storage.get_study_system_attrs(study._study_id)
    for graph_id in ("aq-accuracy-vs-bops", "aq-best-trial-stages", "aq-orderings"):
        assert any(graph_id in k for k in keys), graph_id


def test_dashboard_storage_resolution(digits_result: AutoQuantResult, tmp_path: Path) -> None:
    folder = Path(digits_result.results_dir)
    assert dashboard_storage(folder) == f"sqlite:///{(folder / 'study.db').resolve()}"
    assert dashboard_storage(folder, "postgresql://u:p@h/db") == "postgresql://u:p@h/db"
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "summary.json").write_text(json.dumps({"storage": "postgresql://u@h/db"}))
    assert dashboard_storage(tmp_path) == "postgresql://u@h/db"
    (tmp_path / "best" / "summary.json").write_text(json.dumps({"storage": "postgresql://u:***@h/db"}))
    with pytest.raises(InvalidInputError, match="--storage"):
        dashboard_storage(tmp_path)
    with pytest.raises(InvalidInputError, match="no study found"):
        dashboard_storage(tmp_path / "nothing")


def test_dashboard_command_on_a_folder_without_a_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", str(tmp_path)]) == 2
    assert "no study found" in capsys.readouterr().err


# -- end to end in a browser --------------------------------------------------------------------------------


@pytest.fixture
def dashboard_url(digits_result: AutoQuantResult) -> Iterator[str]:
    """``aq-search dashboard RESULTS_DIR --port 0`` in a subprocess; yields its URL, stops it afterwards."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "aq_search", "dashboard", digits_result.results_dir, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)/dashboard/", line)
        if not match:
            proc.kill()
            raise AssertionError(f"the dashboard did not start: {line!r} {proc.communicate(timeout=10)[1]}")
        yield match.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def render(url: str, tmp_path: Path) -> str:
    """The page's text after its scripts ran, as headless chromium renders it."""
    profile = tmp_path / f"chromium-{abs(hash(url))}"
    out = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=15000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", out, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)))


@pytest.mark.skipif(CHROMIUM is None, reason="needs a headless browser: apt-get install -y chromium (.ci/run installs it)")
def test_dashboard_in_a_browser(digits_result: AutoQuantResult, dashboard_url: str, tmp_path: Path) -> None:
    study = digits_result.study
    with urllib.request.urlopen(f"{dashboard_url}/api/studies", timeout=30) as response:
        studies = json.load(response)["study_summaries"]
    (listed,) = [s for s in studies if s["study_name"] == study.study_name]
    study_id = listed["study_id"]
    page = f"{dashboard_url}/dashboard/studies/{study_id}"

    trials = render(f"{page}/trials", tmp_path)
    assert f"{len(study.trials)} Trials" in trials
    for t in study.trials:
        assert f"Trial {t.number}" in trials
    assert "Pruned" in trials or all(t.state.name != "PRUNED" for t in study.trials)

    note = render(f"{page}/note", tmp_path)
    assert f"aq-search: {study.study_name}" in note
    assert "FP32 accuracy" in note and f"{digits_result.fp32_accuracy:.4f}" in note
    assert f"{digits_result.accuracy:.4f} (trial {digits_result.best_trial})" in note

    best = render(f"{page}/trials?numbers={digits_result.best_trial}", tmp_path)
    assert "Artifacts" in best and "stages.png" in best and "encodings.json" in best
    assert "stage_scores" in best and "relative_bops" in best
    assert "Charts and encodings: Artifacts below." in best  # the trial's note, with its stage table

    top = render(page, tmp_path)
    assert "score vs BOPs" in top and f"best trial {digits_result.best_trial}: score after each stage" in top
