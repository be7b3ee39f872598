"""A study with a time budget orders its trials by expected gain per second (issue 13 point 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from aq_search import AutoQuant
from aq_search.search._schedule_budget import StageRate, TimeBudgetScheduler, rank_orderings, stage_rates

from ._scripted import Scripted, batches, tiny_model

optuna.logging.set_verbosity(optuna.logging.WARNING)

RATES = {
    "bnf": StageRate("bnf", 1.0, 0.0, 3),
    "cle": StageRate("cle", 1.0, 0.01, 3),
    "amp": StageRate("amp", 5.0, 0.04, 2),
    "adaround": StageRate("adaround", 100.0, 0.05, 2),
}


def test_cheap_gain_first_and_stages_that_do_not_fit_are_dropped() -> None:
    orderings = ["bnf>cle>adaround", "bnf>cle>amp"]
    ranked = rank_orderings(orderings, RATES, remaining_s=1_000.0)
    assert [o for o, _ in ranked] == ["bnf>cle>amp", "bnf>cle>adaround"]
    assert abs(ranked[0][1] - 0.05 / 7.0) < 1e-12 and abs(ranked[1][1] - 0.06 / 102.0) < 1e-12
    # 10 s left: AdaRound no longer fits, so its ordering is worth only BN fold + CLE
    short = dict(rank_orderings(orderings, RATES, remaining_s=10.0))
    assert abs(short["bnf>cle>adaround"] - 0.01 / 2.0) < 1e-12


def test_unseen_technique_is_valued_optimistically_and_no_gains_means_no_opinion() -> None:
    ranked = rank_orderings(["bnf>cle", "bnf>bc"], RATES, remaining_s=1_000.0)
    assert ranked[0][0] == "bnf>bc"  # bc has no record: the best mean gain seen (0.05) at the median time
    assert rank_orderings(["bnf>cle"], {"bnf": StageRate("bnf", 1.0, None, 1)}, 100.0) == []


def _trial(stages: list[dict[str, Any]]) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(value=0.5, user_attrs={"stage_scores": stages})


def test_stage_rates_average_the_records_and_skip_scores_from_the_study() -> None:
    trials = [
        _trial([{"stage": "bnf", "seconds": 1.0, "gain": None}, {"stage": "cle", "seconds": 3.0, "gain": 0.02}]),
        _trial(
            [{"stage": "bnf", "seconds": 3.0, "gain": None}, {"stage": "cle", "seconds": 9.0, "gain": 0.1, "from_study": True}]
        ),
    ]
    rates = stage_rates(trials)
    assert rates["bnf"] == StageRate("bnf", 2.0, None, 2)
    assert rates["cle"] == StageRate("cle", 3.0, 0.02, 1)


def test_scheduler_enqueues_the_best_ordering_unless_a_trial_waits() -> None:
    study = optuna.create_study(direction="maximize")
    stages = [
        {"stage": "bnf", "seconds": 1.0, "gain": None},
        {"stage": "cle", "seconds": 1.0, "gain": 0.01},
        {"stage": "adaround", "seconds": 100.0, "gain": 0.05},
    ]
    study.add_trial(_trial(stages))
    study.add_trial(_trial([{"stage": "bnf", "seconds": 1.0, "gain": None}, {"stage": "amp", "seconds": 5.0, "gain": 0.04}]))
    scheduler = TimeBudgetScheduler(["bnf>cle>adaround", "bnf>cle>amp"], timeout=1_000.0)
    scheduler(study, study.trials[-1])
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 1 and "time budget" in waiting[0].user_attrs["scheduled_by"]
    scheduler(study, study.trials[-1])  # the enqueued trial has not run yet: nothing more is enqueued
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 1
    nxt = study.ask()  # the next trial is the enqueued one, with the chosen ordering
    assert nxt.suggest_categorical("pipeline__ordering", ["bnf>cle>adaround", "bnf>cle>amp"]) == "bnf>cle>amp"


def test_optimize_with_a_timeout_schedules_trials_after_the_first(tmp_path: Path) -> None:
    model, data = tiny_model(), batches(2)
    space = {
        "orderings": ["bnf>cle", "bnf>scheme"],
        "scheme": {"candidates": ["tf/tf"]},
        "sampler": "random",
        "max_trials": 2,
        "pruner": {"type": "none"},
        "replay_reference": False,
    }
    # FP32 1.0, then rising scores below the 0.99 target: every stage gains, no trial meets the target
    evaluate = Scripted([1.0, 0.5, 0.6, 0.55, 0.65, 0.6, 0.7], rest=0.5)
    aq = AutoQuant(model, data[0], data, evaluate, param_bw=8, results_dir=tmp_path / "aq", search_space=space, seed=0)
    result = aq.optimize(allowed_accuracy_drop=0.01, timeout=600)
    trials = result.study.trials
    assert "scheduled_by" not in trials[0].user_attrs  # nothing on record yet: the sampler chose
    assert len(trials) == 2 and "scheduled_by" in trials[1].user_attrs
