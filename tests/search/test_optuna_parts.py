"""Users bring their own Optuna parts: sampler, pruner, study, artifact store, and drive ``study.optimize`` themselves."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from aq_search import AutoQuant
from aq_search._errors import InvalidInputError

from ._tiny import Tiny

optuna.logging.set_verbosity(optuna.logging.WARNING)


class _CountingRandom(optuna.samplers.RandomSampler):
    def __init__(self) -> None:
        super().__init__(seed=3)
        self.calls = 0

    def sample_independent(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.calls += 1
        return super().sample_independent(*args, **kwargs)


class _CountingNop(optuna.pruners.NopPruner):
    def __init__(self) -> None:
        self.calls = 0

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        self.calls += 1
        return False


def test_user_sampler_and_pruner_are_used(tmp_path: Path, aq_seed: int) -> None:
    sampler, pruner = _CountingRandom(), _CountingNop()
    result = Tiny(aq_seed).make(tmp_path, sampler=sampler, pruner=pruner, progress=False).optimize(0.0, n_trials=2)
    assert result.study.sampler is sampler
    assert result.study.pruner is pruner
    assert sampler.calls > 0  # the trials' parameters came from it
    assert pruner.calls > 0  # every multi-stage trial asks it after its first stage
    assert result.study.metric_names == ["accuracy"]


def test_an_existing_study_is_used(tmp_path: Path, aq_seed: int) -> None:
    study = optuna.create_study(direction="maximize", study_name="mine", sampler=optuna.samplers.RandomSampler(seed=1))
    result = Tiny(aq_seed).make(tmp_path, study=study, progress=False).optimize(0.0, n_trials=2)
    assert result.study is study
    assert len(study.trials) == 2
    assert study.user_attrs["fp32_accuracy"] == result.fp32_accuracy
    assert not (tmp_path / "aq" / "study.db").exists()  # nothing opened beside it


def test_study_optimize_with_the_public_objective(tmp_path: Path, aq_seed: int) -> None:
    aq = Tiny(aq_seed).make(tmp_path, progress=False)
    study = optuna.create_study(direction="maximize")
    seen: list[int] = []
    # no set-up call: the objective prepares the context on the first trial
    study.optimize(aq.objective, n_trials=3, callbacks=[lambda s, t: seen.append(t.number)])
    assert seen == [0, 1, 2]
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        for key in ("pipeline", "stage_scores", "eval_calls", "encodings_path", "relative_bops"):
            assert key in trial.user_attrs, key
        # the cost class of every stage, as its technique registered it
        expected = {"bnf>scheme": ["free", "data"], "bnf>cle>scheme": ["free", "free", "data"]}
        assert trial.user_attrs["stage_cost_classes"] == expected[trial.user_attrs["ordering"]]
    assert study.user_attrs["fp32_accuracy"] == 1.0  # the tiny case scores agreement with its own FP32 outputs
    result = aq.result(study)
    assert result.accuracy == max(t.value for t in study.trials if t.value is not None)
    assert json.loads((tmp_path / "aq" / "best" / "summary.json").read_text())["n_trials"] == 3


def test_setup_study_then_optimize_with_callbacks_stops_at_target(tmp_path: Path, aq_seed: int) -> None:
    aq = Tiny(aq_seed).make(tmp_path, progress=False)
    study = aq.setup_study(allowed_accuracy_drop=1.0)  # every trial meets it
    study.optimize(aq.objective, n_trials=5, callbacks=[aq.objective.after_trial])
    assert len(study.trials) == 1
    assert study.user_attrs["target_met_by"] == 0
    assert aq.result(study).target_met


def test_artifact_store_receives_each_trials_artifacts(tmp_path: Path, aq_seed: int) -> None:
    from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta

    store_dir = tmp_path / "artifacts"
    store_dir.mkdir()
    store = FileSystemArtifactStore(str(store_dir))
    result = Tiny(aq_seed).make(tmp_path, artifact_store=store, progress=False).optimize(0.0, n_trials=2)
    for trial in result.study.trials:
        metas = get_all_artifact_meta(trial, storage=optuna.storages.get_storage(f"sqlite:///{tmp_path / 'aq' / 'study.db'}"))
        by_name = {m.filename: m for m in metas}
        assert "encodings.json" in by_name
        with store.open_reader(by_name["encodings.json"].artifact_id) as f:
            assert json.loads(f.read())  # a real encodings file
    assert not (tmp_path / "aq" / "artifacts").exists()  # not the default store beside the results
    from aq_search.viz._dashboard import _dashboard_store

    served = _dashboard_store(tmp_path / "aq", None)  # what `aq-search dashboard <results_dir>` serves
    assert isinstance(served, FileSystemArtifactStore) and Path(served._base_path) == store_dir.resolve()


def test_progress_false_opens_no_bar(tmp_path: Path, aq_seed: int, capsys: pytest.CaptureFixture[str]) -> None:
    aq = Tiny(aq_seed).make(tmp_path, progress=False)
    aq.optimize(0.0, n_trials=1)
    assert aq.objective._bar is None
    assert "aq-search trials" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"sampler": "tpe"}, "sampler"),
        ({"pruner": 3}, "pruner"),
        ({"study": "mine"}, "study"),
        ({"progress": "no"}, "progress"),
        ({"artifact_store": "dir"}, "artifact_store"),
        ({"eval_size": 0}, "eval_size"),
        ({"max_retries": -1}, "max_retries"),
        ({"num_calibration_batches": 1.5}, "num_calibration_batches"),
    ],
)
def test_bad_optuna_parts(tmp_path: Path, aq_seed: int, kwargs: dict[str, object], word: str) -> None:
    with pytest.raises(InvalidInputError, match=f"The '{word}' parameter of AutoQuant must be"):
        Tiny(aq_seed).make(tmp_path, **kwargs)


def test_a_minimizing_study_is_refused(tmp_path: Path, aq_seed: int) -> None:
    with pytest.raises(InvalidInputError, match="direction='maximize'"):
        Tiny(aq_seed).make(tmp_path, study=optuna.create_study(direction="minimize"))


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from aq_search import __version__
    from aq_search._cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"aq-search {__version__}"


def test_autoquant_signature_has_the_parts() -> None:
    import inspect

    params = inspect.signature(AutoQuant).parameters
    for name in ("sampler", "pruner", "study", "artifact_store", "progress"):
        assert params[name].kind == inspect.Parameter.KEYWORD_ONLY
