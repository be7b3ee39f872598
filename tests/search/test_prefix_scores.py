"""A configuration or pipeline prefix already scored in the study is never evaluated again."""

from __future__ import annotations

from pathlib import Path

import optuna

from aq_search import AutoQuant

from ._scripted import Scripted, batches, tiny_model

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_repeated_configuration_and_shared_prefix_take_scores_from_the_study(tmp_path: Path) -> None:
    model, data = tiny_model(), batches()
    space = {
        "orderings": ["bnf>scheme", "bnf>scheme>bc"],
        "scheme": {"candidates": ["tf_enhanced/tf_enhanced"]},
        "bias_correction": {"num_batches": 2},
        "sampler": "random",
        "max_trials": 3,
        "replay_reference": False,
        "pruner": {"type": "none"},
    }
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    name = "prefix"
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for ordering in ("bnf>scheme", "bnf>scheme", "bnf>scheme>bc"):
        study.enqueue_trial({"pipeline__ordering": ordering})
    evaluate = Scripted([1.0, 0.6, 0.7], rest=0.8)  # FP32, then trial 0's two stages; later calls 0.8
    aq = AutoQuant(
        model, data[0], data, evaluate, results_dir=tmp_path / "aq", search_space=space, storage=storage, study_name=name, seed=0
    )
    result = aq.optimize(allowed_accuracy_drop=0.01, n_trials=3)
    t0, t1, t2 = result.study.trials
    assert t0.user_attrs["eval_calls"] == 2
    # the same configuration again: no eval call, same scores, marked as from the study
    assert t1.user_attrs["eval_calls"] == 0 and t1.value == t0.value == 0.7
    assert all(s["from_study"] for s in t1.user_attrs["stage_scores"])
    # a longer pipeline sharing the prefix: only the new stage (bias correction) is evaluated
    assert t2.user_attrs["eval_calls"] == 1
    assert [s["from_study"] for s in t2.user_attrs["stage_scores"]] == [True, True, False]
    assert t2.user_attrs["stage_scores"][2]["score"] == 0.8 and t2.value == 0.8
    assert len(evaluate.calls) == 4  # FP32 + 2 + 1: the summary counts them all
    assert result.n_eval_calls == 4
