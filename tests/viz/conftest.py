"""A real digits study (shared by the inspection tests) and a hand-made study with every trial state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from aq_search import AutoQuant, AutoQuantResult
from aq_search.examples.digits import DigitsCase, digits_case
from aq_search.search import load_search_space
from aq_search.viz import AmpSummary

optuna.logging.set_verbosity(optuna.logging.WARNING)


def fast_space(**overrides: Any) -> dict[str, Any]:
    """The built-in fast space, short: no AdaRound, AMP on few samples."""
    space = load_search_space("fast").to_dict()
    space.update({"max_trials": 12, "n_startup_trials": 3})
    space["amp"]["num_samples_for_phase_1"] = 200
    space.update(overrides)
    return space


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsCase:
    return digits_case()  # the shipped weights


@pytest.fixture(scope="session")
def digits_result(digits: DigitsCase, tmp_path_factory: pytest.TempPathFactory) -> AutoQuantResult:
    """W3A6 on the digits CNN with a zero allowed drop: several orderings, pruned trials, AMP (about 10 s)."""
    aq = AutoQuant(
        digits.model,
        digits.dummy_input,
        digits.calibration_batches,
        digits.eval_callback,
        param_bw=3,
        output_bw=6,
        results_dir=tmp_path_factory.mktemp("inspect") / "aq",
        search_space=fast_space(),
        seed=0,
        per_channel=None,
    )
    return aq.optimize(allowed_accuracy_drop=0.0)


def stage(name: str, score: float, num_samples: int | None = None, note: str = "") -> dict[str, Any]:
    return {"stage": name, "score": score, "num_samples": num_samples, "seconds": 0.5, "eval_calls": 1, "note": note}


ORDERING = CategoricalDistribution(["bnf>scheme", "bnf>cle>scheme>bc", "bnf>scheme>amp"])


def synthetic_study(amp_path: Path | None = None) -> optuna.Study:
    """An in-memory study shaped like aq-search's: complete (one AMP), pruned, failed; FP32 0.95, target 0.94."""
    study = optuna.create_study(direction="maximize", study_name="synthetic")
    for k, v in {
        "fp32_accuracy": 0.95,
        "target_accuracy": 0.94,
        "allowed_accuracy_drop": 0.01,
        "param_bw": 4,
        "output_bw": 8,
        "fp32_eval_calls": 1,
        "search_space": {"name": "hand-made", "orderings": list(ORDERING.choices), "max_trials": 5},
        "results_dir": "/nonexistent/aq",
    }.items():
        study.set_user_attr(k, v)
    trials: list[tuple[TrialState, float | None, str, str, list[dict[str, Any]], dict[str, Any]]] = [
        (
            TrialState.COMPLETE,
            0.90,
            "bnf>scheme",
            "bnf > scheme(tf/tf)",
            [stage("bnf", 0.92), stage("scheme", 0.90)],
            {"relative_bops": 0.5, "reference_recipe": True},
        ),
        (
            TrialState.PRUNED,
            None,
            "bnf>cle>scheme>bc",
            "bnf > cle > scheme(mse/mse) > bc",
            [stage("bnf", 0.92, 100), stage("cle", 0.70, 100)],
            {"pruned_at_stage": "2: cle"},
        ),
        (
            TrialState.FAIL,
            None,
            "bnf>cle>scheme>bc",
            "bnf > cle > scheme(tf/tf) > bc",
            [stage("bnf", 0.92)],
            {"error": "stage 2 (cle) failed: RuntimeError: boom"},
        ),
        (
            TrialState.COMPLETE,
            0.945,
            "bnf>scheme>amp",
            "bnf > scheme(tf_enhanced/tf_enhanced) > amp(w4a8/w8a8)",
            [stage("bnf", 0.92), stage("scheme", 0.91, 100), stage("amp", 0.945, note="relative BOPs 0.700")],
            {"relative_bops": 0.7, **({"amp_path": str(amp_path)} if amp_path else {})},
        ),
        (
            TrialState.COMPLETE,
            0.93,
            "bnf>scheme>amp",
            "bnf > scheme(tf/tf) > amp(w4a8/w8a8)",
            [stage("bnf", 0.92), stage("scheme", 0.90), stage("amp", 0.93)],
            {"relative_bops": 0.6},
        ),
    ]
    for state, value, ordering, pipeline, stages, attrs in trials:
        user_attrs = {
            "pipeline": pipeline,
            "ordering": ordering,
            "stage_scores": stages,
            "eval_calls": len(stages),
            "wall_seconds": 1.5,
            **attrs,
        }
        study.add_trial(
            create_trial(
                state=state,
                value=value,
                params={"pipeline__ordering": ordering},
                distributions={"pipeline__ordering": ORDERING},
                user_attrs=user_attrs,
                intermediate_values={i: s["score"] for i, s in enumerate(stages)},
            )
        )
    return study


def synthetic_amp() -> AmpSummary:
    """Four groups; the chosen config lowered ``b`` and ``d`` (the least sensitive)."""
    return AmpSummary.from_dict(
        {
            "accuracy": 0.945,
            "fp32_accuracy": 0.95,
            "target_accuracy": 0.94,
            "baseline_accuracy": 0.948,
            "relative_bops": 0.7,
            "relative_size": 0.8,
            "cost": "bops",
            "phase1_metric": "eval",
            "n_eval_calls": 7,
            "n_groups": 4,
            "group_config": {"a": "w8a8", "b": "w4a8", "c": "w8a8", "d": "w4a8"},
            "sensitivity": [
                ["a", "w4a8", 0.90, 0.048, 0.1],
                ["b", "w4a8", 0.947, 0.001, 0.2],
                ["c", "w4a8", 0.93, 0.018, 0.3],
                ["d", "w4a8", 0.948, -0.002, 0.1],
            ],
            "pareto": [[0.9, 0.949, ["d=w4a8"]], [0.7, 0.945, ["d=w4a8", "b=w4a8"]], [0.4, 0.90, ["d=w4a8", "b=w4a8", "c=w4a8"]]],
            "evaluated": [
                [1.0, 0.948, []],
                [0.9, 0.949, ["d=w4a8"]],
                [0.7, 0.945, ["d=w4a8", "b=w4a8"]],
                [0.4, 0.90, ["d=w4a8", "b=w4a8", "c=w4a8"]],
            ],
            "message": "Met the target with 2 of 4 groups lowered.",
        }
    )
