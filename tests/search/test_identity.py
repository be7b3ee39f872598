"""A study's identity: a resumed or joining run with other settings is refused by name; a resume proposes anew."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from aq_search import AdaRoundParams, InvalidInputError, StudyMismatchError
from aq_search.search._identity import IDENTITY_KEYS, check_identity, resumed_sampler_seed, study_identity

from ._tiny import Tiny as _Tiny
from ._tiny import space as _space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_identity_holds_every_setting_that_changes_results() -> None:
    identity = study_identity(
        model_fingerprint="m",
        data_fingerprint="d",
        space_fingerprint="s",
        param_bw=4,
        output_bw=8,
        allowed_accuracy_drop=0.01,
        quant_scheme="tf_enhanced",
        per_channel=True,
        adaround_params=AdaRoundParams(num_batches=2, num_iterations=30),
        amp_candidates=("w4a8", "w8a8"),
        seed=0,
    )
    assert tuple(identity) == IDENTITY_KEYS
    assert identity["adaround_params"]["num_iterations"] == 30 and identity["amp_candidates"] == ["w4a8", "w8a8"]
    check_identity(identity, dict(identity), study="s", storage="x")  # the same: no error
    changed = {**identity, "seed": 1, "per_channel": False}
    with pytest.raises(StudyMismatchError, match=r"per_channel, seed differ: per_channel: recorded true, now false; seed"):
        check_identity(identity, changed, study="s", storage="x")
    old = {k: v for k, v in identity.items() if k not in ("quant_scheme", "seed")}  # a study from an older aq-search
    with pytest.raises(StudyMismatchError, match=r"quant_scheme, seed differ: quant_scheme: recorded <not recorded>"):
        check_identity(old, identity, study="s", storage="x")
    assert issubclass(StudyMismatchError, InvalidInputError)


@pytest.fixture(scope="module")
def recorded_study(tmp_path_factory: pytest.TempPathFactory, aq_seed: int) -> tuple[_Tiny, Path]:
    """A study with one trial; the refused runs below leave it untouched."""
    tiny, folder = _Tiny(aq_seed), tmp_path_factory.mktemp("identity")
    tiny.make(folder).optimize(allowed_accuracy_drop=0.0, n_trials=1)
    return tiny, folder


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"per_channel": False}, "per_channel"),
        ({"quant_scheme": "tf"}, "quant_scheme"),
        ({"seed": 1}, "seed"),
        ({"output_bw": 6}, "output_bw"),
        ({"adaround_params": AdaRoundParams(num_batches=1, num_iterations=10)}, "adaround_params"),
        ({"mixed_precision_candidates": ["w4a8", "w8a8"]}, "amp_candidates"),
        ({"search_space": _space(max_trials=7)}, "space_fingerprint"),
    ],
)
def test_a_run_with_other_settings_is_refused_naming_them(
    recorded_study: tuple[_Tiny, Path], change: dict[str, Any], named: str
) -> None:
    tiny, folder = recorded_study
    with pytest.raises(StudyMismatchError, match=rf"\({named} differ: {named}: recorded .*, now .*\)") as err:
        tiny.make(folder, **change).optimize(allowed_accuracy_drop=0.0, n_trials=1)
    assert "'identity'" in str(err.value) and "new study_name" in str(err.value)
    assert len(optuna.load_study(study_name="identity", storage=f"sqlite:///{folder / 'aq' / 'study.db'}").trials) == 1


def test_resumed_sampler_seed() -> None:
    assert resumed_sampler_seed(0, 0) == 0 and resumed_sampler_seed(5, 0) == 5
    assert resumed_sampler_seed(0, 3) == 3 and resumed_sampler_seed(7, 3) == 10
    assert resumed_sampler_seed(None, 4) is None


def test_a_resumed_run_does_not_propose_the_first_runs_trials_again(tmp_path: Path, aq_seed: int) -> None:
    tiny = _Tiny(aq_seed)
    first = tiny.make(tmp_path).optimize(allowed_accuracy_drop=0.0, n_trials=2)
    ran = [t.params for t in first.study.trials]
    again = tiny.make(tmp_path).optimize(allowed_accuracy_drop=0.0, n_trials=2)
    resumed = [t.params for t in again.study.trials[2:]]
    assert len(resumed) == 2
    # with the first run's sampler seed, a seeded random sampler proposes exactly ``ran`` again
    assert resumed != ran, (ran, resumed)
    fresh = tiny.make(tmp_path / "fresh").optimize(allowed_accuracy_drop=0.0, n_trials=2)
    assert [t.params for t in fresh.study.trials] == ran  # a new study is still reproducible from its seed
