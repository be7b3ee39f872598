"""A best trial that misses the target within the eval's error after AdaRound gets another AdaRound draw."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from torch import nn

from aq_search import AdaRoundParams, AutoQuant
from aq_search.search._redraw import REDRAW_ATTR, near_miss_margin, plan_redraw
from aq_search.viz._records import summarize_trial

from ._scripted import Scripted, batches, tiny_model

optuna.logging.set_verbosity(optuna.logging.WARNING)

_ADAROUND_LAST = [{"stage": "bnf"}, {"stage": "scheme"}, {"stage": "adaround"}]


def _trial(number: int, value: float, state: Any = optuna.trial.TrialState.COMPLETE, **attrs: Any) -> optuna.trial.FrozenTrial:
    user = {"stage_scores": _ADAROUND_LAST, "best_stage": 3, **attrs}
    complete = state == optuna.trial.TrialState.COMPLETE
    t = optuna.trial.create_trial(state=state, value=value if complete else None, user_attrs=user)
    t.number = number
    return t


def _plan(trials: list[optuna.trial.FrozenTrial], trial: optuna.trial.FrozenTrial, **kw: Any) -> dict[str, Any] | None:
    settings: dict[str, Any] = {"target": 0.95, "margin": 0.02, "max_redraws": 2, "base_seed": 7}
    settings.update(kw)
    return plan_redraw(trials, trial, **settings)


def test_near_miss_margin_is_one_standard_error_at_the_target() -> None:
    assert near_miss_margin(0.95, 128, 0.05) == pytest.approx((0.95 * 0.05 / 128) ** 0.5)  # 0.0193: 2.5 of 128 images
    assert near_miss_margin(0.8565, 10_000, 0.01) == pytest.approx(0.00351, abs=1e-5)
    assert near_miss_margin(0.95, None, 0.04) == pytest.approx(0.01)  # no eval size: a quarter of the allowed drop
    assert near_miss_margin(12.0, 100, 2.0) == pytest.approx(0.5)  # not an accuracy


def test_a_near_miss_after_adaround_gets_the_next_seed() -> None:
    t0 = _trial(0, 0.9453, cheap_first=True)
    attrs = _plan([t0], t0)
    assert attrs is not None
    assert attrs[REDRAW_ATTR] == {"of": 0, "draw": 1, "seed": 8, "miss": pytest.approx(0.0047)}
    assert attrs["cheap_first"] is True  # what builds the trial's pipeline is copied
    # a redraw that misses again: the next draw of the same trial, until max_redraws
    t1 = _trial(1, 0.94, **{REDRAW_ATTR: attrs[REDRAW_ATTR]})
    t2 = _trial(2, 0.9453, **{REDRAW_ATTR: attrs[REDRAW_ATTR]})
    again = _plan([t0, t2], t2)
    assert again is not None
    assert (again[REDRAW_ATTR]["of"], again[REDRAW_ATTR]["draw"], again[REDRAW_ATTR]["seed"]) == (0, 2, 9)
    t3 = _trial(3, 0.9453, **{REDRAW_ATTR: {"of": 0, "draw": 2, "seed": 9}})
    assert _plan([t0, t2, t3], t3) is None  # two redraws of trial 0 already: max_redraws
    assert _plan([t0, t2], t2, max_redraws=1) is None
    assert t1.value is not None


@pytest.mark.parametrize(
    ("value", "attrs", "why"),
    [
        (0.95, {}, "met"),
        (0.92, {}, "missed by more than the margin"),
        (0.9453, {"best_stage": 2}, "the result came before AdaRound"),
        (0.9453, {"stage_scores": [{"stage": "bnf"}, {"stage": "amp"}]}, "no AdaRound"),
        (0.9453, {"within_budget": False}, "over the cost budget"),
        (0.9453, {"reference_flow": "aimet"}, "AIMET's own flow"),
    ],
)
def test_no_redraw(value: float, attrs: dict[str, Any], why: str) -> None:
    t = _trial(0, value, **attrs)
    assert _plan([t], t) is None, why


def test_only_the_best_trial_is_redrawn_and_only_once_at_a_time() -> None:
    best, t = _trial(0, 0.948), _trial(1, 0.9453)
    assert _plan([best, t], t) is None  # another trial is better: the sampler's next trial is worth more
    assert _plan([best, t], best) is not None
    queued = _trial(2, 0.0, state=optuna.trial.TrialState.WAITING, **{REDRAW_ATTR: {"of": 0, "draw": 1, "seed": 8}})
    assert _plan([best, t, queued], best) is None  # a redraw of trial 0 is already waiting
    assert _plan([best], best, max_redraws=0) is None


def _has_adaround(model: nn.Module, _: int | None) -> float:
    meta = getattr(model, "meta", {}).get("aq_search", {})
    return 0.94 if "adaround" in meta else 0.90


def _space(redraws: int) -> dict[str, Any]:
    return {
        "orderings": ["bnf>scheme>adaround"],
        "scheme": {"candidates": ["tf/tf"]},
        "adaround": {"num_batches": 2, "num_iterations": 20},
        "sampler": "random",
        "max_trials": 3,
        "pruner": {"type": "none"},
        "replay_reference": False,
        "adaround_redraws": redraws,
    }


def _search(tmp_path: Path, redraws: int, **kwargs: Any) -> tuple[AutoQuant, Any, Scripted]:
    model, data = tiny_model(), batches(4)
    # FP32 1.0; then 0.94 for a model AdaRound rounded, 0.90 before: trial 0 misses 0.95 by 0.01 < 0.0218
    evaluate = Scripted([1.0], by_model=_has_adaround)
    settings: dict[str, Any] = {"param_bw": 4, "results_dir": tmp_path / "aq", "search_space": _space(redraws), "seed": 5}
    aq = AutoQuant(model, data[0], data, evaluate, eval_size=100, **settings, **kwargs)
    return aq, aq.optimize(allowed_accuracy_drop=0.05), evaluate


def test_a_redraw_reuses_the_prefix_scores_and_replays_its_own_draw(tmp_path: Path) -> None:
    aq, result, evaluate = _search(tmp_path, 1)
    t0, t1, t2 = result.study.trials
    assert REDRAW_ATTR not in t0.user_attrs and t0.value == pytest.approx(0.94)
    assert t1.user_attrs[REDRAW_ATTR] == {"of": 0, "draw": 1, "seed": 6, "miss": pytest.approx(0.01)}
    assert t1.params == t0.params
    # the stages before AdaRound have the same prefix keys: scored from the study, no eval call
    k0, k1 = t0.user_attrs["prefix_keys"], t1.user_attrs["prefix_keys"]
    assert k0[:2] == k1[:2] and k0[2] != k1[2]
    assert [s["from_study"] for s in t1.user_attrs["stage_scores"]] == [True, True, False]
    assert t0.user_attrs["eval_calls"] == 3 and t1.user_attrs["eval_calls"] == 1
    # one redraw at most here: trial 2 is the sampler's (the same parameters as trial 0, so nothing is evaluated)
    assert REDRAW_ATTR not in t2.user_attrs and t2.user_attrs["eval_calls"] == 0
    assert len(evaluate.calls) == 1 + 3 + 1
    # the records say so: the planned pipeline names the seed, the report marks the redraw
    assert "seed 6" in t1.user_attrs["pipeline"] and "seed" not in t0.user_attrs["pipeline"]
    assert summarize_trial(t1).redraw_of == 0 and summarize_trial(t0).redraw_of is None
    assert "(AdaRound redraw of trial 0)" in (tmp_path / "aq" / "report.html").read_text(encoding="utf-8")
    # replaying the redraw rebuilds AdaRound with its seed
    run = aq.replay(1, study=result.study)
    assert run.pipeline.stages[-1].config.seed == 6
    assert aq.replay(0, study=result.study).pipeline.stages[-1].config.seed is None


def test_a_redraw_of_a_lazily_scored_prefix_evaluates_only_from_adaround_on(tmp_path: Path) -> None:
    # lazy scoring: BN fold and CLE wait for the scheme stage's screen, which evaluates some of them; the redraw's
    # screen gets their scores from the study and decides as trial 0's did, so only its AdaRound is evaluated
    space = _space(1) | {"orderings": ["bnf>cle>scheme>adaround"], "stage_scoring": "lazy", "proxy_tie_db": 20.0}
    model, data = tiny_model(), batches(4)
    # far below the target before AdaRound: the screen stops after its first (best-proxy) candidate
    evaluate = Scripted([1.0], by_model=lambda m, n: 0.5 if _has_adaround(m, n) < 0.94 else 0.94)
    settings: dict[str, Any] = {"param_bw": 4, "results_dir": tmp_path / "aq", "search_space": space, "seed": 5}
    result = AutoQuant(model, data[0], data, evaluate, eval_size=100, **settings).optimize(allowed_accuracy_drop=0.05)
    t0, t1 = result.study.trials[:2]
    assert t1.user_attrs[REDRAW_ATTR]["of"] == 0
    screened = [s for s in t0.user_attrs["stage_scores"][:3] if s["score"] is not None]
    assert screened and t0.user_attrs["eval_calls"] == len(screened) + 1  # the screen's calls, then AdaRound's
    assert t1.user_attrs["eval_calls"] == 1
    assert [s["score"] for s in t1.user_attrs["stage_scores"][:3]] == [s["score"] for s in t0.user_attrs["stage_scores"][:3]]


def test_no_redraw_when_off_or_when_the_user_fixed_adarounds_seed(tmp_path: Path) -> None:
    _, result, _ = _search(tmp_path / "off", 0)
    assert not any(REDRAW_ATTR in t.user_attrs for t in result.study.trials)
    user = AdaRoundParams(num_batches=2, num_iterations=20, seed=3)
    _, result, _ = _search(tmp_path / "fixed", 1, adaround_params=user)
    assert not any(REDRAW_ATTR in t.user_attrs for t in result.study.trials)
