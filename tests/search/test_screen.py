"""Lazy stage scoring and proxy ties: evaluations go where they can change whether the target is met.

Scores are scripted (no training): the tests check what the search does with them, structurally.
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
import torch

from aq_search._errors import SearchSpaceError
from aq_search.quantsim import prepare_model
from aq_search.search import CountingEval, Pipeline, PipelineRun, RunContext, SchemeSelectConfig, Stage, run_pipeline
from aq_search.search._aimet_flow import full_evaluations
from aq_search.search._pipeline import suggest_pipeline
from aq_search.search._screen import MAX_SCREENED, Candidate, screen
from aq_search.search._space import load_search_space
from aq_search.techniques import BatchNormFoldConfig, BiasCorrectionConfig, CLEConfig

from ._scripted import Scripted, batches, tiny_model


def _ctx(target: float = 0.99, tie_db: float = 1.0, eval_size: int | None = 128) -> Any:
    return SimpleNamespace(fp32_accuracy=1.0, target=target, tie_db=tie_db, evaluate=SimpleNamespace(eval_size=eval_size))


def _screen(ctx: Any, proxies: list[float], scores: dict[int, float]) -> list[int]:
    cands = [Candidate(i, object(), None, p, current=i == 0) for i, p in enumerate(proxies)]  # type: ignore[arg-type]
    done = screen(ctx, cands, lambda c: (scores[c.index], None), lambda _sim: True)
    return [s.candidate.index for s in done]


def test_near_ties_are_evaluated_while_the_best_misses_within_its_noise() -> None:
    # 20.3 dB scores 0.9766 on 128 images (2 images short of 0.99: within noise); 19.8 dB is a near tie
    # and is evaluated (0.9922 meets); 15 dB is not a tie and is never evaluated
    assert _screen(_ctx(), [20.3, 19.8, 15.0], {0: 0.9766, 1: 0.9922, 2: 1.0}) == [0, 1]
    # the first meets the target: no tie to break
    assert _screen(_ctx(), [20.3, 19.8], {0: 0.995, 1: 1.0}) == [0]
    # the best is far below the target on a large evaluation: a near tie cannot plausibly reach it
    assert _screen(_ctx(target=0.85, eval_size=10_000), [14.1, 14.0], {0: 0.81, 1: 0.9}) == [0]
    # ties off (0 dB): the best proxy alone
    assert _screen(_ctx(tie_db=0.0), [20.3, 19.8], {0: 0.9766, 1: 0.9922}) == [0]
    # at most MAX_SCREENED evaluations, best proxy first
    proxies = [20.0 - 0.1 * i for i in range(MAX_SCREENED + 2)]
    order = _screen(_ctx(), proxies[::-1], dict.fromkeys(range(len(proxies)), 0.98))
    assert len(order) == MAX_SCREENED and order[0] == len(proxies) - 1


def _context(evaluate: Any, *, lazy: bool, tie_db: float, n: int | None = None, eval_size: int = 100) -> RunContext:
    model, data = tiny_model(), batches()
    ctx = RunContext(prepare_model(model, data[0]), data[0], data, CountingEval(evaluate, eval_size=eval_size), 1.0, 0.99, 8, 8)
    ctx.lazy_scoring, ctx.tie_db, ctx.intermediate_num_samples = lazy, tie_db, n
    return ctx


LAZY = Pipeline(
    (
        Stage("bnf", BatchNormFoldConfig()),
        Stage("cle", CLEConfig()),
        Stage("bc", BiasCorrectionConfig(num_batches=2)),
    )
)


def _evaluated(run: PipelineRun) -> list[int]:
    return [i for i, s in enumerate(run.stages) if not math.isnan(s.score)]


def test_stages_before_a_cheap_stage_are_not_evaluated_and_never_returned() -> None:
    evaluate = Scripted([], rest=0.5)
    run = run_pipeline(_context(evaluate, lazy=True, tie_db=0.0), LAZY)
    # bnf and cle come before a cheap stage: one evaluation in all, at bias correction's screen (best proxy)
    assert len(evaluate.calls) == 1 and len(_evaluated(run)) == 1
    assert run.best_index in _evaluated(run), "a stage not evaluated is never the result"
    for i, s in enumerate(run.stages):
        if i not in _evaluated(run):
            assert s.to_dict()["score"] is None and s.num_samples == 0 and not s.best
    # every stage is evaluated when scoring is not lazy (the behaviour of spaces without stage_scoring: lazy)
    every = Scripted([], rest=0.5)
    assert len(run_pipeline(_context(every, lazy=False, tie_db=0.0), LAZY).stages) == 3 and len(every.calls) == 3


def test_the_screen_breaks_proxy_ties_by_eval_and_keeps_the_eval_best() -> None:
    # every stage within the (wide) tie: the screen evaluates best proxy first; 0.95 and 0.96 miss within
    # their noise on 100 samples, so the third is evaluated too; the eval's best (0.97) is the result
    evaluate = Scripted([0.95, 0.96, 0.97], rest=0.0)
    run = run_pipeline(_context(evaluate, lazy=True, tie_db=20.0), LAZY)
    assert evaluate.calls == [None, None, None]
    assert sorted(s.score for s in run.stages) == [0.95, 0.96, 0.97]
    assert run.score == 0.97 and run.stages[run.best_index].score == 0.97


def test_a_subset_screen_never_promotes_a_miss() -> None:
    # first candidate: subset 0.995 (bound reaches the target) confirmed in full at 0.90: a miss, far below
    # the target on 1,000 samples, so no tie is evaluated; the result is 0.90 on the full evaluation
    evaluate = Scripted([0.995, 0.90], rest=1.0)
    run = run_pipeline(_context(evaluate, lazy=True, tie_db=20.0, n=100, eval_size=1000), LAZY)
    assert evaluate.calls == [100, None]
    assert run.score == 0.90 and run.stages[run.best_index].num_samples is None


def test_scheme_pairs_within_the_tie_are_evaluated_and_the_eval_best_is_the_choice() -> None:
    pairs = ("tf/tf", "tf_enhanced/tf_enhanced")
    pipeline = Pipeline(
        (Stage("bnf", BatchNormFoldConfig()), Stage("scheme", SchemeSelectConfig(candidates=pairs, select_by="sqnr")))
    )
    # bnf is not evaluated (scheme is cheap); the best-proxy pair scores 0.95 (misses, within noise), the other 0.995
    evaluate = Scripted([0.95, 0.995], rest=0.0)
    run = run_pipeline(_context(evaluate, lazy=True, tie_db=20.0), pipeline)
    scheme = run.stages[1]
    assert evaluate.calls == [None, None] and run.score == 0.995 and run.best_index == 1
    assert "near-tie broken by eval" in scheme.note
    tried = scheme.note.split("broken by eval: ")[1]
    second = tried.split(", ")[1].split("=")[0]
    assert scheme.choice == second and run.sim.param_quant_scheme.name == second.split("/")[0]
    # no tie (0 dB): one evaluation, the best proxy's pair
    once = Scripted([0.95], rest=0.0)
    run = run_pipeline(_context(once, lazy=True, tie_db=0.0), pipeline)
    assert once.calls == [None] and run.score == 0.95


def test_default_space_screens_lazily_and_the_aimet_flow_scores_every_stage() -> None:
    space = load_search_space("default")
    assert space.stage_scoring == "lazy" and space.proxy_tie_db == 1.0
    again = load_search_space(space.to_dict())
    assert again.stage_scoring == "lazy" and again.proxy_tie_db == 1.0
    plain = {"orderings": ["bnf>scheme"]}
    assert "stage_scoring" not in load_search_space(plain).to_dict()  # absent: fingerprints of old spaces unchanged
    for key, bad in (("stage_scoring", "sometimes"), ("proxy_tie_db", -1.0), ("proxy_tie_db", True)):
        with pytest.raises(SearchSpaceError, match=key):
            load_search_space({**plain, key: bad})
    ctx = _context(Scripted([]), lazy=True, tie_db=1.0)
    with full_evaluations(ctx):
        assert not ctx.lazy_scoring
    assert ctx.lazy_scoring


def test_a_model_stage_the_proxy_says_hurts_is_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    import aq_search.search._screen as screen_module

    # proxies in call order: bnf (deferred) 20 dB, CLE 10 dB (fell by more than the 1 dB tie: undone),
    # bias correction 21 dB at its screen; the screen evaluates it first, then stops (0.5 is far below)
    proxies = iter([20.0, 10.0, 21.0])
    monkeypatch.setattr(screen_module, "proxy_sqnr", lambda ctx, sim: next(proxies))
    import aq_search.search._run as run_module

    monkeypatch.setattr(run_module, "proxy_sqnr", screen_module.proxy_sqnr)
    evaluate = Scripted([0.5], rest=0.0)
    ctx = _context(evaluate, lazy=True, tie_db=1.0)
    run = run_pipeline(ctx, LAZY)
    assert run.stages[1].note.startswith("undone: output SQNR fell from 20.0 to 10.0 dB")
    assert len(evaluate.calls) == 1 and run.best_index == 2 and run.score == 0.5
    # bias correction ran on the model before CLE: the one bnf produced (CLE changes the weights)
    folded = run_pipeline(_context(Scripted([0.5]), lazy=False, tie_db=0.0), Pipeline(LAZY.stages[:1])).model
    equalized = run_pipeline(_context(Scripted([0.1, 0.2]), lazy=False, tie_db=0.0), Pipeline(LAZY.stages[:2])).model
    assert all(torch.equal(a, b) for a, b in zip(run.model.parameters(), folded.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(folded.parameters(), equalized.parameters(), strict=True))
    # ties off: nothing is undone
    proxies = iter([20.0, 10.0, 19.5, 19.0])  # read by the patched proxy above
    kept = run_pipeline(_context(Scripted([], rest=0.5), lazy=True, tie_db=0.0), LAZY)
    assert not kept.stages[1].note.startswith("undone")


def test_default_trial_0_runs_amp_before_adaround_and_amp_hands_adaround_its_most_precise_config() -> None:
    from aq_search.search._reference import cheap_first_params

    space = load_search_space("default")
    params = cheap_first_params(space, list(space.orderings), None, amp_sets=[("w4a8", "w8a8")])
    assert params is not None and params["pipeline__ordering"] == "bnf>cle>scheme>amp>adaround"
    # a space without that ordering takes AdaRound before AMP
    others = [o for o in space.orderings if o != "bnf>cle>scheme>amp>adaround"]
    params = cheap_first_params(space, others, None)
    assert params is not None and params["pipeline__ordering"] == "bnf>cle>scheme>adaround>amp"
    # AMP before AdaRound evaluates its most precise config first; AMP after AdaRound (or last) the share prefix
    for ordering, first in (("bnf>cle>scheme>amp>adaround", "longest"), ("bnf>cle>scheme>adaround>amp", "share")):
        sets = [("w4a8", "w8a8", "w16a8", "w4a16"), ("w4a8", "w16a8", "w16a16")]
        params = cheap_first_params(space, list(space.orderings), None, amp_sets=sets)
        assert params is not None
        trial = optuna.trial.FixedTrial({**params, "pipeline__ordering": ordering, "scheme__per_channel": True})
        pipeline = suggest_pipeline(trial, space, param_bw=4, output_bw=8, num_batches_available=4)
        amp = next(s for s in pipeline.stages if s.key == "amp")
        assert amp.config.lift_first == first, ordering


def test_a_stage_whose_input_is_within_the_subset_noise_of_the_target_goes_straight_to_full() -> None:
    from aq_search import AdaRoundParams

    pipeline = Pipeline((Stage("bnf", BatchNormFoldConfig()), Stage("adaround", AdaRoundParams(num_batches=1, num_iterations=5))))
    # bnf (before an expensive stage: evaluated): subset 0.985 on 100 samples, within one standard error
    # (0.012) of 0.99: confirmed, at 0.97; AdaRound's input scored 0.97 in full, within 100 samples' noise of
    # 0.99: a screen would be confirmed anyway, so AdaRound goes straight to the full evaluation
    evaluate = Scripted([0.985, 0.97, 0.98], rest=0.0)
    run = run_pipeline(_context(evaluate, lazy=True, tie_db=1.0, n=100, eval_size=1000), pipeline)
    assert evaluate.calls == [100, None, None] and run.stages[1].num_samples is None and run.score == 0.98
    # every stage scored as before without lazy scoring: AdaRound is screened on the subset first
    before = Scripted([0.985, 0.97, 0.98], rest=0.0)
    run_pipeline(_context(before, lazy=False, tie_db=0.0, n=100, eval_size=1000), pipeline)
    assert before.calls == [100, None, 100, None]


def test_a_stage_that_more_stages_follow_is_confirmed_only_within_one_standard_error() -> None:
    from aq_search import AdaRoundParams

    pipeline = Pipeline((Stage("bnf", BatchNormFoldConfig()), Stage("adaround", AdaRoundParams(num_batches=1, num_iterations=5))))
    # bnf: 0.96 on 100 samples is 1.5 standard errors (0.0196) below 0.99: not worth a full evaluation before
    # AdaRound (the last stage would be: its bound at two standard errors, 0.999, reaches the target); its
    # subset score still guides AdaRound, which goes straight to the full evaluation
    evaluate = Scripted([0.96, 0.97], rest=0.0)
    run = run_pipeline(_context(evaluate, lazy=True, tie_db=1.0, n=100, eval_size=1000), pipeline)
    assert evaluate.calls == [100, None]
    assert run.stages[0].num_samples == 100 and run.stages[0].score == 0.96
    assert run.stages[1].num_samples is None and run.score == 0.97 and run.best_index == 1
    # the same subset score at the last stage is confirmed (two standard errors)
    last = Scripted([0.96, 0.975], rest=0.0)
    alone = run_pipeline(_context(last, lazy=True, tie_db=1.0, n=100, eval_size=1000), Pipeline(pipeline.stages[:1]))
    assert last.calls == [100, None] and alone.stages[0].num_samples is None and alone.score == 0.975
    # a subset score that beats every full one is confirmed at the end (keep-best): no unconfirmed result
    late = Scripted([0.96, 0.90, 0.95], rest=0.0)
    run = run_pipeline(_context(late, lazy=True, tie_db=1.0, n=100, eval_size=1000), pipeline)
    assert late.calls == [100, None, None] and run.best_index == 0 and run.score == 0.95


def test_a_screen_the_study_predicts_misses_is_not_evaluated(monkeypatch: pytest.MonkeyPatch) -> None:
    import aq_search.search._run as run_module
    import aq_search.search._screen as screen_module
    from aq_search import AdaRoundParams
    from aq_search.search._prefix import KnownScores

    # bnf (deferred) and CLE are screened before AdaRound; the study holds a model with a higher output SQNR
    # (12 dB against the candidates' 10) that scored 0.95 in full: more than one standard error below 0.99
    monkeypatch.setattr(screen_module, "proxy_sqnr", lambda ctx, sim: 10.0)
    monkeypatch.setattr(run_module, "proxy_sqnr", screen_module.proxy_sqnr)
    ada = Stage("adaround", AdaRoundParams(num_batches=1, num_iterations=5))
    pipeline = Pipeline((Stage("bnf", BatchNormFoldConfig()), Stage("cle", CLEConfig()), ada))

    def run_with(records: dict[str, dict[str, Any]], lazy: bool = True) -> tuple[Scripted, PipelineRun]:
        evaluate = Scripted([0.97], rest=0.0)
        ctx = _context(evaluate, lazy=lazy, tie_db=1.0 if lazy else 0.0, n=100, eval_size=1000)
        ctx.known = KnownScores(dict(records))
        return evaluate, run_pipeline(ctx, pipeline)

    missed = {"k": {"score": 0.95, "num_samples": None, "proxy": 12.0}}
    evaluate, run = run_with(missed)
    # the CLE screen is skipped; AdaRound's input is estimated at 0.95, within 100 samples' noise of 0.99: full
    assert evaluate.calls == [None] and run.best_index == 2 and run.score == 0.97
    assert math.isnan(run.stages[1].score) and "predicted to miss" in run.stages[1].note
    # AdaRound scored alone and clearly missed (0.97 in full against 0.99): it records its proxy for later screens
    assert run.stages[2].proxy == 10.0
    # not predicted (the screen is evaluated): a lower proxy, a record within noise of the target, or no proxy
    for record in (
        {"score": 0.95, "num_samples": None, "proxy": 9.0},
        {"score": 0.988, "num_samples": None, "proxy": 12.0},
        {"score": 0.95, "num_samples": None, "proxy": None},
    ):
        evaluate, run = run_with({"k": record})
        assert evaluate.calls[0] == 100 and not math.isnan(run.stages[1].score), record
    # stages scored at a screen record their proxy, so later trials can use them
    assert run.stages[1].proxy == 10.0
    # lazy scoring off: every stage is evaluated whatever the study holds
    evaluate, run = run_with(missed, lazy=False)
    assert evaluate.calls[0] == 100 and len(evaluate.calls) >= 3


def test_a_stage_a_later_stage_requires_is_never_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    import aq_search.search._run as run_module
    import aq_search.search._screen as screen_module
    from aq_search.search import SchemeConfig

    # scheme (deferred) 20 dB, BN fold 10 dB: a fall, but CLE after it requires BN fold, so it stays; then 21 dB
    proxies = itertools.chain([20.0, 10.0], itertools.repeat(21.0))
    monkeypatch.setattr(screen_module, "proxy_sqnr", lambda ctx, sim: next(proxies))
    monkeypatch.setattr(run_module, "proxy_sqnr", screen_module.proxy_sqnr)
    pipeline = Pipeline(
        (
            Stage("scheme", SchemeConfig(pair="tf_enhanced/tf_enhanced", per_channel=True)),
            Stage("bnf", BatchNormFoldConfig()),
            Stage("cle", CLEConfig()),
            Stage("bc", BiasCorrectionConfig(num_batches=2)),
        )
    )
    run = run_pipeline(_context(Scripted([0.5], rest=0.0), lazy=True, tie_db=1.0), pipeline)
    assert not run.stages[1].note.startswith("undone") and len(run.stages) == 4
