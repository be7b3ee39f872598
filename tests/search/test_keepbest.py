"""Keep-best: a stage that lowers the score never lowers the trial's value or the returned model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from aq_search import AutoQuant
from aq_search.quantsim import prepare_model
from aq_search.search import CountingEval, Pipeline, RunContext, SchemeConfig, Stage, run_pipeline
from aq_search.techniques import BatchNormFoldConfig, BiasCorrectionConfig

from ._scripted import Scripted, batches, tiny_model

optuna.logging.set_verbosity(optuna.logging.WARNING)

PIPELINE = Pipeline(
    (
        Stage("bnf", BatchNormFoldConfig()),
        Stage("scheme", SchemeConfig(pair="tf_enhanced/tf_enhanced", per_channel=True)),
        Stage("bc", BiasCorrectionConfig(num_batches=2)),
    )
)


def _biases(model: torch.nn.Module) -> list[torch.Tensor]:
    return [m.bias.detach().clone() for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def test_run_keeps_the_best_stage_and_its_model() -> None:
    model, data = tiny_model(), batches()
    prepared = prepare_model(model, data[0])
    # bnf 0.90, scheme 0.95, bias correction 0.80: the scheme stage wins
    evaluate = CountingEval(Scripted([0.90, 0.95, 0.80]))
    ctx = RunContext(prepared, data[0], data, evaluate, fp32_accuracy=1.0, target=0.99, param_bw=8, output_bw=8)
    run = run_pipeline(ctx, PIPELINE)
    assert [s.score for s in run.stages] == [0.90, 0.95, 0.80]
    assert run.score == 0.95 and run.best_index == 1
    assert [s.best for s in run.stages] == [False, True, False]
    assert run.applied.ordering == "bnf>scheme"
    # the returned sim is the one before bias correction: its biases are the calibrated sim's, unchanged
    plain = ctx.calibrated_sim(run.model, "tf_enhanced/tf_enhanced", True)
    changed = run_pipeline(
        RunContext(prepared, data[0], data, CountingEval(Scripted([], rest=0.5)), 1.0, 0.99, 8, 8), PIPELINE
    )
    assert changed.best_index == 0  # equal scores: the earliest stage is kept
    for kept, ref in zip(_biases(run.sim.model), _biases(plain.model), strict=True):
        assert torch.equal(kept, ref)
    # and bias correction really changed them (so the check above can fail)
    corrected = run_pipeline(
        RunContext(prepared, data[0], data, CountingEval(Scripted([0.1, 0.2, 0.3])), 1.0, 0.99, 8, 8), PIPELINE
    )
    assert corrected.best_index == 2
    assert any(not torch.equal(a, b) for a, b in zip(_biases(corrected.sim.model), _biases(plain.model), strict=True))
    # every stage records its cost and gain
    s = run.stages[2]
    assert s.eval_calls == 1 and s.eval_equivalents == 1.0 and s.gain == pytest.approx(-0.15) and s.seconds > 0


def _space(**overrides: Any) -> dict[str, Any]:
    space: dict[str, Any] = {
        "orderings": ["bnf>scheme>bc"],
        "scheme": {"candidates": ["tf_enhanced/tf_enhanced"], "per_channel": True},
        "bias_correction": {"num_batches": 2},
        "adaround": {"num_batches": 2, "num_iterations": 20},
        "amp": {"candidate_sets": [["w8a8", "w4a8"]], "num_samples_for_phase_1": 8},
        "sampler": "random",
        "max_trials": 1,
        "replay_reference": False,
        "pruner": {"type": "none"},
    }
    space.update(overrides)
    return space


def test_trial_value_and_returned_model_are_the_best_stage(tmp_path: Path) -> None:
    model, data = tiny_model(), batches()
    # FP32 1.0; bnf 0.90, scheme 0.95, bias correction 0.80; later calls (replays) 0.5
    evaluate = Scripted([1.0, 0.90, 0.95, 0.80], rest=0.5)
    aq = AutoQuant(model, data[0], data, evaluate, results_dir=tmp_path / "aq", search_space=_space(), seed=0)
    result = aq.optimize(allowed_accuracy_drop=0.01)
    trial = result.study.trials[0]
    assert trial.value == 0.95 and result.accuracy == 0.95
    assert trial.user_attrs["best_stage"] == 2 and trial.user_attrs["last_stage_score"] == 0.80
    assert result.best_stage == 2 and result.pipeline.ordering == "bnf>scheme"
    summary = json.loads((tmp_path / "aq" / "best" / "summary.json").read_text())
    assert summary["best_stage"] == 2 and "stage 2 of 3" in summary["best_stage_label"]
    assert summary["accuracy"] == 0.95 and not summary["target_met"]
    # the returned model is the scheme stage's, not the bias-corrected one
    replayed = aq.replay(0, study=result.study)  # rebuilds the recorded prefix: bnf > scheme
    assert replayed.pipeline.ordering == "bnf>scheme"
    for kept, ref in zip(_biases(result.model), _biases(replayed.sim.model), strict=True):
        assert torch.equal(kept, ref)
    assert summary["n_eval_equivalents"] == pytest.approx(4.0) and summary["n_eval_calls"] == 4
