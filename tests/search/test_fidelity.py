"""Multi-fidelity: a subset screen never promotes a model whose full score misses while a met one existed."""

from __future__ import annotations

import random

import pytest

from aq_search.quantsim import prepare_model
from aq_search.search import CountingEval, Pipeline, PipelineRun, RunContext, SchemeConfig, Stage, run_pipeline
from aq_search.search._fidelity import could_meet, upper_bound
from aq_search.techniques import BatchNormFoldConfig, BiasCorrectionConfig

from ._scripted import Scripted, batches, tiny_model

PIPELINE = Pipeline(
    (
        Stage("bnf", BatchNormFoldConfig()),
        Stage("scheme", SchemeConfig(pair="tf_enhanced/tf_enhanced", per_channel=True)),
        Stage("bc", BiasCorrectionConfig(num_batches=2)),
    )
)


def _run(scores: list[float], n: int = 100) -> tuple[PipelineRun, Scripted]:
    model, data = tiny_model(), batches()
    evaluate = Scripted(scores, rest=0.0)
    ctx = RunContext(prepare_model(model, data[0]), data[0], data, CountingEval(evaluate, eval_size=1000), 1.0, 0.975, 8, 8)
    ctx.intermediate_num_samples = n
    return run_pipeline(ctx, PIPELINE), evaluate


def test_subset_screen_confirms_what_can_meet_and_keeps_the_met_model() -> None:
    # bnf: subset 0.50 (bound 0.60: not confirmed); scheme: subset 0.96 (bound 0.999: confirmed, full 0.98,
    # meets 0.975); bias correction: subset 0.99 (confirmed, full 0.96: misses)
    run, evaluate = _run([0.50, 0.96, 0.98, 0.99, 0.96])
    assert evaluate.calls == [100, 100, None, 100, None]
    assert run.score == 0.98 and run.best_index == 1 and run.stages[1].num_samples is None
    # a scheme promoting by the subset score alone (>= target) would have skipped 0.96 and returned 0.96
    assert run.stages[2].score == 0.96
    # eval-equivalents: 3 subsets of 100/1000 plus 2 full evaluations
    assert sum(s.eval_equivalents for s in run.stages) == pytest.approx(2.3)


def test_result_always_rests_on_a_full_score() -> None:
    rng = random.Random(0)
    for _ in range(5):
        scores = [round(rng.uniform(0.9, 1.0), 3) for _ in range(6)]
        run, _ = _run(scores)
        best = run.stages[run.best_index]
        assert best.num_samples is None, "the returned model's score is a full evaluation"
        full = [s.score for s in run.stages if s.num_samples is None]
        assert run.score == max(full)


def test_confidence_bound() -> None:
    assert upper_bound(0.9, None, 0.01) == 0.9
    assert upper_bound(0.9, 100, 0.01) == pytest.approx(0.9 + 2 * (0.9 * 0.1 / 100) ** 0.5)
    assert upper_bound(1.0, 100, 0.01) > 1.0  # a perfect subset is not taken as exact
    assert upper_bound(75.0, 100, 1.0) == 76.0  # not a fraction: the allowed drop is the margin
    assert could_meet(0.96, 100, 0.975, 0.01) and not could_meet(0.90, 100, 0.975, 0.01)
