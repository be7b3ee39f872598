"""The reference trial replays AIMET's recipe with the user's or AIMET's own AdaRound settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from aq_search import AdaRoundParams, AutoQuant
from aq_search.search import pipeline_from_dict

from ._scripted import Scripted, batches, tiny_model

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space() -> dict[str, Any]:
    return {
        "orderings": ["scheme>bnf>cle>adaround", "bnf>scheme>adaround"],
        "scheme": {"candidates": ["select", "tf/tf"], "select_by": "sqnr"},
        "adaround": {"num_batches": 2, "num_iterations": {"low": 50, "high": 400}, "reg_param": {"low": 0.002, "high": 0.05}},
        "sampler": "random",
        "max_trials": 1,
        "pruner": {"type": "none"},
    }


def _run(tmp_path: Path, param_bw: int, **kwargs: Any) -> optuna.trial.FrozenTrial:
    model, data = tiny_model(), batches(6)
    # FP32 1.0, then every stage 1.0: the target is met at the first full score, before AdaRound runs
    evaluate = Scripted([1.0], rest=1.0)
    aq = AutoQuant(
        model, data[0], data, evaluate, param_bw=param_bw, results_dir=tmp_path / "aq", search_space=_space(), seed=0, **kwargs
    )
    result = aq.optimize(allowed_accuracy_drop=0.01)
    return result.study.trials[0]


@pytest.mark.parametrize(("param_bw", "iterations"), [(8, 10_000), (4, 15_000)])
def test_reference_trial_uses_aimet_adaround_defaults(tmp_path: Path, param_bw: int, iterations: int) -> None:
    trial = _run(tmp_path, param_bw)
    assert trial.user_attrs["reference_recipe"] is True
    ada = trial.user_attrs["reference_adaround"]
    # AIMET's AdaroundParameters defaults; batches covering up to 2,000 samples (all 6 here)
    assert ada["num_iterations"] == iterations
    assert ada["reg_param"] == 0.01 and list(ada["beta_range"]) == [20.0, 2.0] and ada["warm_start"] == 0.2
    assert ada["num_batches"] == 6
    assert f"adaround(it={iterations}, reg=0.01" in trial.user_attrs["pipeline"]
    assert ada["early_stop_patience"] > 0  # the one AdaRound difference, stated in the records:
    assert any("stopping early" in d for d in trial.user_attrs["reference_differences"])
    assert not any(k.startswith("adaround__") for k in trial.params), "the reference's AdaRound is not a random draw"
    diffs = " ".join(trial.user_attrs["reference_differences"])
    assert "output SQNR" in diffs


def test_reference_trial_uses_the_users_adaround_params(tmp_path: Path) -> None:
    user = AdaRoundParams(num_batches=3, num_iterations=123, reg_param=0.02, beta_range=(10.0, 3.0), warm_start=0.1)
    trial = _run(tmp_path, 4, adaround_params=user)
    assert trial.user_attrs["reference_adaround"] == {**user.to_dict(), "beta_range": [10.0, 3.0]}
    stage = {"technique": "adaround", "type": "AdaRoundParams", "config": trial.user_attrs["reference_adaround"]}
    stages = pipeline_from_dict({"stages": [stage]})
    assert stages.stages[0].config == user


def _cheap_space() -> dict[str, Any]:
    space = _space()
    space["orderings"] = ["scheme>bnf>cle>adaround", "bnf>cle>scheme>amp>adaround"]
    space["amp"] = {"candidate_sets": [["w{param_bw}a{output_bw}", "w8a8"]], "num_samples_for_phase_1": [512, 128]}
    space["max_trials"] = 2
    return space


def test_cheap_first_is_trial_0_and_the_reference_runs_only_when_it_misses(tmp_path: Path) -> None:
    model, data = tiny_model(), batches(6)
    # every score 1.0: the cheap-first trial meets the target at its first stage, so the study stops there
    evaluate = Scripted([1.0], rest=1.0)
    aq = AutoQuant(model, data[0], data, evaluate, param_bw=4, results_dir=tmp_path / "aq", search_space=_cheap_space(), seed=0)
    result = aq.optimize(allowed_accuracy_drop=0.01)
    first = result.study.trials[0]
    assert first.user_attrs.get("cheap_first") is True and "reference_recipe" not in first.user_attrs
    assert first.params["pipeline__ordering"] == "bnf>cle>scheme>amp>adaround"
    assert first.params["amp__num_samples_for_phase_1"] == 128, "the cheap-first trial screens on the fewest samples"
    assert result.target_met and result.best_trial == 0
    # the reference recipe was enqueued as trial 1 but never run: the target was met before it
    ran = [t for t in result.study.trials if t.state.is_finished()]
    assert [t.number for t in ran] == [0]
    waiting = [t for t in result.study.trials if not t.state.is_finished()]
    assert waiting and waiting[0].user_attrs.get("reference_recipe") is True
    assert any("after the cheap-first trial" in d for d in waiting[0].user_attrs["reference_differences"])


def test_cheap_first_adaround_takes_aimets_defaults_clamped_into_the_space() -> None:
    from aq_search.search._reference import cheap_first_params
    from aq_search.search._space import load_search_space

    space = load_search_space("default")
    orderings = ["bnf>cle>scheme>amp>adaround", "scheme>bnf>cle>adaround"]
    params = cheap_first_params(space, orderings, None)
    assert params is not None and params["pipeline__ordering"] == "bnf>cle>scheme>amp>adaround"
    iterations, reg, warm = space.adaround.num_iterations, space.adaround.reg_param, space.adaround.warm_start
    # nothing drawn at random: the space's fewest iterations (the cheap trial), AIMET's reg 0.01 and warm start 0.2
    assert params["adaround__num_iterations"] == iterations.low
    assert params["adaround__reg_param"] == min(max(0.01, reg.low), reg.high)
    assert params["adaround__warm_start"] == min(max(0.2, warm.low), warm.high)
    # the user's own AdaRound settings are fixed: the trial asks for no AdaRound parameter
    fixed = cheap_first_params(space, orderings, None, adaround_fixed=True)
    assert fixed is not None and not any(k.startswith("adaround__") for k in fixed)


def test_reference_differences_name_the_learning_rate_a_short_user_run_gets() -> None:
    from aq_search.search._reference import reference_differences
    from aq_search.search._space import load_search_space

    space = load_search_space("default")
    ordering = "scheme>bnf>cle>adaround"

    def rate_lines(params: AdaRoundParams) -> list[str]:
        return [d for d in reference_differences(space, ordering, params, True) if "learning rate" in d]

    short = rate_lines(AdaRoundParams(num_batches=1, num_iterations=40))
    assert len(short) == 1 and "0.025 for 40 iterations" in short[0] and "AIMET: 0.001" in short[0]
    assert rate_lines(AdaRoundParams(num_batches=1, num_iterations=1_000)) == []  # AIMET's rate already
    assert rate_lines(AdaRoundParams(num_batches=1, num_iterations=40, learning_rate=1e-3)) == []  # set by the user
