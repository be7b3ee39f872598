"""A failing side effect of a trial (its encodings file, charts, dashboard artifacts) never costs its result."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
import pytest

from aq_search.search import _objective
from aq_search.viz import _dashboard

from ._tiny import Tiny

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_a_failed_write_is_logged_and_recorded_and_the_score_stands(
    tmp_path: Path, aq_seed: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def disk_full(*_: object) -> Path:
        raise OSError(28, "No space left on device")

    def read_only(*_: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(_objective, "_write_encodings", disk_full)
    monkeypatch.setattr(_dashboard, "_record_trial", read_only)
    tiny = Tiny(aq_seed)
    with caplog.at_level(logging.WARNING, logger="aq_search"):
        result = tiny.make(tmp_path).optimize(allowed_accuracy_drop=0.0, n_trials=2)
    trials = result.study.trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for t in trials:
        assert t.value is not None and 0.0 <= t.value <= 1.0
        assert "encodings_path" not in t.user_attrs
        errors = t.user_attrs["side_effect_errors"]
        assert errors[0] == "writing its encodings: OSError: [Errno 28] No space left on device"
        assert errors[1].startswith("recording it for the dashboard") and "PermissionError" in errors[1]
    assert result.accuracy == max(t.value for t in trials if t.value is not None)
    assert "No space left on device (the trial's score stands)" in caplog.text


def test_no_failure_no_record(tmp_path: Path, aq_seed: int) -> None:
    result = Tiny(aq_seed).make(tmp_path).optimize(allowed_accuracy_drop=0.0, n_trials=1)
    trial = result.study.trials[0]
    assert "side_effect_errors" not in trial.user_attrs
    assert Path(trial.user_attrs["encodings_path"]).is_file()
