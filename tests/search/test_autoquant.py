"""AutoQuant end to end on the digits model (real training, real quantization, real search)."""

from __future__ import annotations

import math
import multiprocessing as mp
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from aq_search import AdaRoundParams, AutoQuant, EvalCallbackError, InvalidInputError
from aq_search.examples.digits import DigitsCase, digits_case
from aq_search.search import load_search_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("digits-model")


@pytest.fixture(scope="module")
def digits(digits_cache: Path) -> DigitsCase:
    return digits_case(digits_cache)


def small_space(**overrides: Any) -> dict[str, Any]:
    """A quick space over the digits model: no long AdaRound, few trials."""
    space = load_search_space("default").to_dict()
    space.update(
        {
            "orderings": ["scheme>bnf>cle>adaround", "bnf>cle>scheme", "bnf>scheme>bc", "bnf>cle>scheme>amp"],
            "max_trials": 4,
            "n_startup_trials": 2,
        }
    )
    space["adaround"].update({"num_iterations": 60, "num_batches": 2})
    space["amp"]["num_samples_for_phase_1"] = 200
    space.update(overrides)
    return space


def make(digits: DigitsCase, tmp_path: Path, **kwargs: Any) -> AutoQuant:
    defaults: dict[str, Any] = {
        "param_bw": 4,
        "output_bw": 8,
        "results_dir": tmp_path / "aq",
        "search_space": small_space(),
        "seed": 0,
    }
    defaults.update(kwargs)
    return AutoQuant(digits.model, digits.dummy_input, digits.calibration_batches, digits.eval_callback, **defaults)


def test_run_inference_is_bn_folded_default_scheme(digits: DigitsCase, tmp_path: Path) -> None:
    aq = make(digits, tmp_path)
    sim, acc = aq.run_inference()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in sim.model.modules())
    assert sim.param_quant_scheme.name == "tf_enhanced"
    assert acc == pytest.approx(digits.eval_callback(sim.model))
    # the premise of the tests below that need trials to miss the target: W4A4 per-tensor misses a 1% drop without a
    # search by far (W4A8 per-channel, with tf_enhanced's weight ranges, may not miss it at all)
    _, hard = make(digits, tmp_path / "hard", output_bw=4, per_channel=False).run_inference()
    assert hard < digits.eval_callback(digits.model) - 0.01, "W4A4 per-tensor without search misses a 1% target"


def test_first_trial_replays_aimet_and_search_meets_target(digits: DigitsCase, tmp_path: Path) -> None:
    aq = make(digits, tmp_path)
    result = aq.optimize(allowed_accuracy_drop=0.02)
    first = result.study.trials[0]
    assert first.user_attrs.get("reference_recipe") is True
    assert first.params["pipeline__ordering"] == "scheme>bnf>cle>adaround"
    assert first.params["scheme__candidate"] == "select"
    assert result.target_met, result.message
    assert result.accuracy >= result.fp32_accuracy - 0.02
    assert result.accuracy == pytest.approx(digits.eval_callback(result.model))
    # the study stopped at the target: no trial after the one that met it
    assert result.study.user_attrs["target_met_by"] == result.best_trial
    assert max(t.number for t in result.study.trials) == result.best_trial
    # results folder
    best = Path(result.results_dir) / "best"
    assert {"encodings.json", "model_state.pt", "pipeline.yaml", "summary.json"} <= {p.name for p in best.iterdir()}
    attrs = result.study.trials[result.best_trial].user_attrs
    for key in ("pipeline", "stage_scores", "eval_calls", "wall_seconds", "encodings_path"):
        assert key in attrs
    assert result.n_eval_calls == 1 + sum(t.user_attrs.get("eval_calls", 0) for t in result.study.trials)


def test_unreachable_target_returns_best_with_message(digits: DigitsCase, tmp_path: Path) -> None:
    space = small_space(orderings=["bnf>scheme", "bnf>cle>scheme", "scheme>bnf"], max_trials=3)
    aq = make(digits, tmp_path, param_bw=2, output_bw=4, search_space=space, per_channel=False)
    result = aq.optimize(allowed_accuracy_drop=0.0)
    assert not result.target_met
    assert result.n_trials == 3
    assert "Target not met" in result.message and "bnf" in result.message
    complete = [t for t in result.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert result.accuracy == max(t.value for t in complete if t.value is not None)
    # the returned model really scores what the study says
    assert digits.eval_callback(result.model) == pytest.approx(result.accuracy)


def test_replay_of_best_params_rebuilds_the_same_accuracy(digits: DigitsCase, tmp_path: Path) -> None:
    space = small_space(orderings=["bnf>cle>scheme>adaround", "bnf>scheme>bc"], max_trials=2, replay_reference=False)
    aq = make(digits, tmp_path, search_space=space)
    result = aq.optimize(allowed_accuracy_drop=0.0, n_trials=2)
    best = result.study.best_trial
    fresh = make(digits, tmp_path / "other", search_space=space)
    run = fresh.replay(best, study=result.study)
    assert run.score == pytest.approx(best.value)
    x = digits.split.test_x[:100]
    with torch.no_grad():
        assert torch.equal(run.sim.model(x), result.model(x))


def test_shared_prefix_hits_the_cache(digits: DigitsCase, tmp_path: Path) -> None:
    space = small_space(orderings=["bnf>cle>scheme"], max_trials=3, replay_reference=False)
    space["scheme"]["candidates"] = ["tf/tf", "tf_enhanced/tf_enhanced", "mse/tf_enhanced"]
    space["cle"]["high_bias_absorption"] = True
    space["cle"]["replace_relu6"] = "always"  # one CLE setting, so every trial shares the bnf>cle prefix
    # W4A4 per-tensor with no drop allowed: no trial meets the target, so all three run
    result = make(digits, tmp_path, search_space=space, output_bw=4, per_channel=False).optimize(
        allowed_accuracy_drop=0.0, n_trials=3
    )
    hits = [t.user_attrs.get("cache_hits", {}) for t in result.study.trials]
    assert len(hits) == 3 and not result.target_met
    assert hits[0].get("bnf", 0) == 0 and hits[0].get("cle", 0) == 0
    assert all(h.get("bnf", 0) >= 1 and h.get("cle", 0) >= 1 and h.get("calibration", 0) >= 1 for h in hits[1:]), hits


def test_resume_does_not_redo_completed_trials(digits: DigitsCase, tmp_path: Path) -> None:
    space = small_space(orderings=["bnf>scheme", "bnf>cle>scheme"], max_trials=4, replay_reference=False)
    # W4A4 per-tensor with no drop allowed: no trial meets the target, so the study is not over after two trials
    hard = {"search_space": space, "study_name": "resume", "output_bw": 4, "per_channel": False}
    first = make(digits, tmp_path, **hard).optimize(allowed_accuracy_drop=0.0, n_trials=2)
    assert not first.target_met
    before = [(t.number, t.value, t.params) for t in first.study.trials]
    again = make(digits, tmp_path, **hard).optimize(allowed_accuracy_drop=0.0)
    after = [(t.number, t.value, t.params) for t in again.study.trials]
    assert len(after) == 4 and after[:2] == before
    # resuming with different settings is refused instead of mixing results
    with pytest.raises(InvalidInputError, match="allowed_accuracy_drop"):
        make(digits, tmp_path, **hard).optimize(allowed_accuracy_drop=0.05)


def test_seed_makes_runs_reproducible(digits: DigitsCase, tmp_path: Path) -> None:
    space = small_space(max_trials=3, replay_reference=False)
    a = make(digits, tmp_path / "a", search_space=space, seed=7).optimize(allowed_accuracy_drop=0.0)
    b = make(digits, tmp_path / "b", search_space=space, seed=7).optimize(allowed_accuracy_drop=0.0)
    assert [(t.params, t.value) for t in a.study.trials] == [(t.params, t.value) for t in b.study.trials]


def test_some_trials_are_pruned(digits: DigitsCase, tmp_path: Path) -> None:
    space = small_space(
        orderings=["bnf>cle>scheme>bc"],
        max_trials=8,
        n_startup_trials=8,
        replay_reference=False,
        pruner={"type": "median", "n_startup_trials": 2, "n_warmup_steps": 0, "percentile": 25.0},
        stage_scoring="every",  # pruning needs a score after every stage (lazy scoring skips those before a cheap one)
    )
    space["scheme"]["candidates"] = ["tf/tf", "mse/mse", "tf_enhanced/tf_enhanced", "tf_enhanced/percentile:99.9"]
    aq = make(digits, tmp_path, param_bw=3, output_bw=4, search_space=space, per_channel=False)
    result = aq.optimize(allowed_accuracy_drop=0.0)
    states = [t.state for t in result.study.trials]
    assert optuna.trial.TrialState.PRUNED in states, states
    pruned = [t for t in result.study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert all("pruned_at_stage" in t.user_attrs for t in pruned)


def test_fixed_adaround_and_amp_settings(digits: DigitsCase, tmp_path: Path) -> None:
    space = small_space(orderings=["bnf>cle>scheme>adaround>amp"], max_trials=1, replay_reference=False)
    aq = make(digits, tmp_path, search_space=space)
    aq.set_adaround_params(AdaRoundParams(num_batches=1, num_iterations=30))
    aq.set_mixed_precision_params(candidates=["w8a8", "w4a8"])
    result = aq.optimize(allowed_accuracy_drop=0.005)
    trial = result.study.trials[0]
    assert "adaround__num_iterations" not in trial.params and "amp__candidates" not in trial.params
    assert "adaround(it=30" in trial.user_attrs["pipeline"]
    assert trial.user_attrs.get("relative_bops") is not None


# -- bad input -----------------------------------------------------------------------------------------


def test_eval_callback_errors(digits: DigitsCase, tmp_path: Path) -> None:
    calls = {"n": 0}

    def flaky(model: torch.nn.Module, num_samples: int | None = None) -> float:
        calls["n"] += 1
        if calls["n"] == 3:  # the FP32 eval passes; one trial's eval raises
            raise RuntimeError("eval server unavailable")
        return digits.eval_callback(model, num_samples)

    space = small_space(orderings=["bnf>scheme", "bnf>cle>scheme"], max_trials=3, replay_reference=False)
    aq = AutoQuant(
        digits.model,
        digits.dummy_input,
        digits.calibration_batches,
        flaky,
        param_bw=4,
        output_bw=4,  # W4A4 per-tensor, no drop allowed: no trial meets the target, so all three run
        per_channel=False,
        results_dir=tmp_path / "flaky",
        search_space=space,
        seed=0,
    )
    result = aq.optimize(allowed_accuracy_drop=0.0)
    failed = [t for t in result.study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1 and "eval server unavailable" in failed[0].user_attrs["error"]
    assert result.n_trials == 3 and not math.isnan(result.accuracy) and not result.target_met

    def broken(model: torch.nn.Module, num_samples: int | None = None) -> float:
        raise KeyError("labels")

    with pytest.raises(EvalCallbackError, match="FP32 model failed, so no search was started"):
        AutoQuant(
            digits.model,
            digits.dummy_input,
            digits.calibration_batches,
            broken,
            results_dir=tmp_path / "broken",
            search_space=space,
        ).optimize()

    for bad_value in (float("nan"), "0.9", None):

        def returns(model: torch.nn.Module, num_samples: int | None = None, v: Any = bad_value) -> Any:
            return v

        with pytest.raises(EvalCallbackError, match="number"):
            AutoQuant(
                digits.model,
                digits.dummy_input,
                digits.calibration_batches,
                returns,
                results_dir=tmp_path / "nan",
                search_space=space,
            ).optimize()


def test_bad_arguments(digits: DigitsCase, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no batches"):
        AutoQuant(digits.model, digits.dummy_input, [], digits.eval_callback, results_dir=tmp_path).optimize()
    aq = make(digits, tmp_path)
    with pytest.raises(InvalidInputError, match="allowed_accuracy_drop"):
        aq.optimize(allowed_accuracy_drop=-0.01)
    with pytest.raises(InvalidInputError, match="param_bw"):
        make(digits, tmp_path, param_bw=1)
    with pytest.raises(InvalidInputError, match="eval_callback must be callable"):
        AutoQuant(digits.model, digits.dummy_input, digits.calibration_batches, "accuracy", results_dir=tmp_path)  # type: ignore[arg-type]
    only_amp = small_space(orderings=["bnf>scheme>amp"])
    only_amp["amp"]["candidate_sets"] = [["w{param_bw}a{output_bw}", "w8a8"]]
    with pytest.raises(InvalidInputError, match="no valid ordering"):
        make(digits, tmp_path / "amp", param_bw=8, output_bw=8, search_space=only_amp).optimize()


# -- two workers on one storage ----------------------------------------------------------------------------


def _worker(results_dir: str, storage: str, cache_dir: str, space: dict[str, Any], drop: float) -> None:
    import optuna

    from aq_search import AutoQuant
    from aq_search.examples.digits import digits_case

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    case = digits_case(cache_dir)
    aq = AutoQuant(
        case.model,
        case.dummy_input,
        case.calibration_batches,
        case.eval_callback,
        param_bw=4,
        output_bw=8,
        results_dir=results_dir,
        search_space=space,
        storage=storage,
        study_name="shared",
        seed=None,
    )
    aq.optimize(allowed_accuracy_drop=drop)


def test_two_workers_stop_at_target(digits: DigitsCase, digits_cache: Path, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    space = small_space(orderings=["bnf>cle>scheme", "bnf>scheme>bc", "scheme>bnf"], max_trials=30, replay_reference=False)
    fp32 = digits.eval_callback(digits.model)
    drop = 0.02
    ctx = mp.get_context("spawn")
    cache = str(digits_cache)
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / f"w{i}"), storage, cache, space, drop)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
        assert p.exitcode == 0
    study = optuna.load_study(study_name="shared", storage=storage)
    met = study.user_attrs["target_met_by"]
    assert study.trials[met].value is not None and study.trials[met].value >= fp32 - drop - 1e-9
    # every worker stopped: at most one trial per worker started after the target was met (a worker may have
    # finished another trial and started the next one while trial `met` was still running: those do not count)
    done = study.trials[met].datetime_complete
    assert done is not None
    after = [t.number for t in study.trials if t.datetime_start is not None and t.datetime_start > done]
    assert len(after) <= 2, (met, after, [(t.number, t.state, t.datetime_start) for t in study.trials])
    assert all(t.state.is_finished() for t in study.trials)


@pytest.mark.parametrize("select_by", ["eval", "sqnr"])
def test_scheme_selection_by_eval_or_by_output_sqnr(digits: DigitsCase, select_by: str) -> None:
    from aq_search.quantsim import prepare_model
    from aq_search.search import CountingEval
    from aq_search.search._pipeline import (
        Pipeline,
        RunContext,
        SchemeSelectConfig,
        Stage,
        _outputs,
        output_sqnr,
        run_pipeline,
    )

    pairs = ("tf/tf", "tf_enhanced/tf_enhanced", "tf_enhanced/percentile:99.9")
    model = prepare_model(digits.model, digits.dummy_input)
    evaluate = CountingEval(digits.eval_callback)
    fp32 = digits.eval_callback(digits.model)
    ctx = RunContext(model, digits.dummy_input, digits.calibration_batches, evaluate, fp32, fp32 + 1.0, 4, 8)
    stage = Stage("scheme", SchemeSelectConfig(candidates=pairs, per_channel=False, select_by=select_by))
    run = run_pipeline(ctx, Pipeline((stage,)))
    result = run.stages[0]
    # every pair scored; the stage's own score is the winner's, never measured twice
    assert result.eval_calls == (len(pairs) if select_by == "eval" else 1)
    assert all(p in result.note for p in pairs)
    chosen = result.note.split()[1]
    assert run.score == pytest.approx(digits.eval_callback(run.sim.model))
    # the winner is the best pair by the chosen measure, recomputed here independently
    def measure(pair: str) -> float:
        sim = ctx.calibrated_sim(model, pair, False)
        if select_by == "eval":
            return digits.eval_callback(sim.model)
        return output_sqnr(_outputs(model, ctx, 4), _outputs(sim.model, ctx, 4))

    scores = {p: measure(p) for p in pairs}
    assert scores[chosen] == max(scores.values()), scores
    if select_by == "sqnr":
        assert len({round(v, 3) for v in scores.values()}) > 1, "the pairs differ in SQNR"


def test_output_sqnr_numbers() -> None:
    from aq_search.search._pipeline import output_sqnr

    ref = [torch.tensor([1.0, 1.0]), torch.tensor([[2.0]])]
    assert output_sqnr(ref, [torch.tensor([1.0, 0.0]), torch.tensor([[2.0]])]) == pytest.approx(10 * math.log10(6.0))
    assert output_sqnr(ref, ref) == math.inf


def test_amp_orderings_are_not_pruned_before_their_amp_stage() -> None:
    from aq_search.search._objective import may_prune_after
    from aq_search.search._pipeline import Pipeline, Stage

    def pipeline(*keys: str) -> Pipeline:
        return Pipeline(tuple(Stage(k, None) for k in keys))

    bc = pipeline("bnf", "cle", "scheme", "bc")
    assert [may_prune_after(bc, i) for i in range(4)] == [True, True, True, False]
    amp_last = pipeline("bnf", "scheme", "adaround", "amp")
    assert [may_prune_after(amp_last, i) for i in range(4)] == [False, False, False, False]
    amp_middle = pipeline("bnf", "scheme", "amp", "adaround")
    assert [may_prune_after(amp_middle, i) for i in range(4)] == [False, False, True, False]
