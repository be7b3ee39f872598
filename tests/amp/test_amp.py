from __future__ import annotations

import itertools
import logging
import math
import pickle
from typing import Any

import pytest
import torch
from torch import nn

from aq_search import EncodingsNotComputedError, EvalCallbackError, InvalidInputError, QuantSim
from aq_search.amp import (
    MixedPrecisionConfig,
    apply_mixed_precision,
    choose_mixed_precision,
    find_quantizer_groups,
    parse_candidate,
    set_mixed_precision,
)
from aq_search.amp._state import GroupPrecisions
from aq_search.examples.digits import DigitsCase

from .conftest import ConvLinear, ResidualTwoHeads, calibrated, digits_sim, output_fidelity


def _state(sim: QuantSim) -> dict[str, Any]:
    """Every quantizer's format, encoding, rounding and flags."""
    out: dict[str, Any] = {}
    for kind, quantizers in (("a", sim.activation_quantizers), ("p", sim.param_quantizers)):
        for name, q in quantizers.items():
            out[f"{kind}:{name}"] = (
                q.bitwidth,
                q.dtype,
                q.enabled,
                q.frozen,
                None if q.scale is None else q.scale.tolist(),
                None if q.zero_point is None else q.zero_point.tolist(),
                None if q.rounding is None else q.rounding.tolist(),
            )
    return out


@pytest.fixture
def small() -> tuple[QuantSim, Any]:
    torch.manual_seed(0)
    model = ResidualTwoHeads().eval()
    x = torch.randn(16, 3, 8, 8)
    return calibrated(model, x), output_fidelity(model, x)


def _monotone(result: Any) -> None:
    costs = [p.relative_cost for p in result.pareto]
    accs = [p.accuracy for p in result.pareto]
    assert costs == sorted(costs, reverse=True) and len(set(costs)) == len(costs)
    assert accs == sorted(accs, reverse=True) and len(set(accs)) == len(accs)
    # the evaluated prefixes: each applies more moves and costs strictly less
    by_moves = sorted(result.evaluated, key=lambda p: len(p.lowered))
    assert all(a.relative_cost > b.relative_cost for a, b in itertools.pairwise(by_moves))


# -- real numbers: the digits CNN at W4 ----------------------------------------------------------------
def test_digits_w4_meets_target_below_all_w8(digits: DigitsCase, folded_digits: nn.Module) -> None:
    sim = digits_sim(digits, folded_digits, per_channel=True)
    result = choose_mixed_precision(sim, ["w8a8", "w4a8"], digits.eval_callback, 0.01, num_samples_for_phase_1=128)
    print(f"\ndigits W4 per-channel: {result.message}")
    print(result.summary())
    fp32 = digits.eval_callback(folded_digits)
    assert result.fp32_accuracy == pytest.approx(fp32)
    all_w4 = min(result.evaluated, key=lambda p: p.relative_cost)
    assert all_w4.relative_cost == pytest.approx(0.5)  # the binary search probes all-W4 first ...
    assert all_w4.accuracy < result.target_accuracy  # ... and W4 everywhere fails the target
    assert result.target_met
    assert result.accuracy >= fp32 - 0.01
    assert result.relative_bops < 0.75  # clearly below the all-W8 config
    assert set(result.config.values()) == {"w8a8", "w4a8"}
    assert digits.eval_callback(sim.model) == pytest.approx(result.accuracy)  # the config is applied
    assert result.n_eval_calls <= 3 + len(result.groups) + math.ceil(math.log2(len(result.groups))) + 1
    _monotone(result)


def test_replaying_the_config_on_a_fresh_sim(digits: DigitsCase, folded_digits: nn.Module) -> None:
    sim = digits_sim(digits, folded_digits, per_channel=False)
    fp32 = digits.eval_callback(folded_digits)
    result = choose_mixed_precision(sim, ["w8a8", "w4a8", "w2a8"], digits.eval_callback, 0.01, fp32_accuracy=fp32)
    assert result.target_met
    fresh = digits_sim(digits, folded_digits, per_channel=False)
    set_mixed_precision(fresh, result.config)
    assert digits.eval_callback(fresh.model) == pytest.approx(result.accuracy)
    assert fresh.encodings() == sim.encodings()


def test_target_out_of_reach_returns_the_best_and_says_so(digits: DigitsCase, folded_digits: nn.Module) -> None:
    sim = digits_sim(digits, folded_digits, per_channel=True)
    result = choose_mixed_precision(sim, ["w8a8", "w4a8"], digits.eval_callback, 0.0, fp32_accuracy=1.0)
    assert not result.target_met
    assert "cannot be met" in result.message and "w8a8" in result.message
    assert set(result.config.values()) == {"w8a8"}
    assert result.relative_bops == 1.0
    assert result.n_eval_calls == 1
    assert digits.eval_callback(sim.model) == pytest.approx(result.accuracy)


def test_sqnr_phase_1_needs_no_eval_calls(digits: DigitsCase, folded_digits: nn.Module) -> None:
    sim = digits_sim(digits, folded_digits, per_channel=True)
    result = choose_mixed_precision(
        sim,
        ["w8a8", "w4a8"],
        digits.eval_callback,
        0.01,
        forward_pass_callback=digits.calibration_batches[:2],
        phase1_metric="sqnr",
    )
    assert result.target_met and result.relative_bops < 0.75
    phase2 = len(result.evaluated)
    assert result.n_eval_calls == 1 + phase2  # FP32 + the phase-2 configs (the baseline is one of them)
    assert all(e.sensitivity > 0 and math.isfinite(e.score) for e in result.sensitivity)
    assert "SQNR dB" in result.sensitivity_table()


def test_size_cost_and_float_candidates(digits: DigitsCase, folded_digits: nn.Module) -> None:
    sim = digits_sim(digits, folded_digits, per_channel=True)
    result = choose_mixed_precision(
        sim, ["fp16", "w8a16", "w4a8"], digits.eval_callback, 0.01, cost="size", phase2_search="linear"
    )
    assert result.target_met
    assert result.relative_cost == result.relative_size < 1.0
    assert 2 <= len(result.evaluated) <= len(result.sensitivity) + 1  # linear: every prefix, one per effective move
    _monotone(result)
    for layer, cand in result.config.items():
        q = sim.param_quantizer(layer)
        expected = parse_candidate(cand)
        assert (q.bitwidth, q.dtype) == expected.param_format


# -- bad input and failures ----------------------------------------------------------------------------
def test_fewer_than_two_candidates(small: tuple[QuantSim, Any]) -> None:
    sim, evaluate = small
    with pytest.raises(InvalidInputError, match="at least two candidates"):
        choose_mixed_precision(sim, ["w8a8"], evaluate, 0.01)


def test_malformed_candidate(small: tuple[QuantSim, Any]) -> None:
    sim, evaluate = small
    with pytest.raises(InvalidInputError, match=r"'w8-a8' is malformed.*w<param bits>a<activation bits>"):
        choose_mixed_precision(sim, ["w8a8", "w8-a8"], evaluate, 0.01)


@pytest.mark.parametrize("drop", [-0.1, float("nan"), "0.01", None])
def test_bad_allowed_drop(small: tuple[QuantSim, Any], drop: object) -> None:
    sim, evaluate = small
    with pytest.raises(InvalidInputError, match="'allowed_accuracy_drop' parameter"):
        choose_mixed_precision(sim, ["w8a8", "w4a8"], evaluate, drop)  # type: ignore[arg-type]


def test_bad_sim_and_callback(small: tuple[QuantSim, Any]) -> None:
    sim, evaluate = small
    with pytest.raises(InvalidInputError, match="'sim' parameter"):
        choose_mixed_precision(sim.model, ["w8a8", "w4a8"], evaluate, 0.01)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="'eval_callback' parameter"):
        choose_mixed_precision(sim, ["w8a8", "w4a8"], 0.9, 0.01)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="'forward_pass_callback' parameter"):
        choose_mixed_precision(sim, ["w8a8", "w4a8"], evaluate, 0.01, phase1_metric="sqnr")


def _failing(evaluate: Any, fail_on: int, how: str) -> Any:
    calls = {"n": 0}

    def my_eval(model: nn.Module, num_samples: int | None = None) -> Any:
        calls["n"] += 1
        if calls["n"] == fail_on:
            if how == "raise":
                raise RuntimeError("dataset went away")
            return {"nan": float("nan"), "str": "0.9", "none": None, "inf": math.inf}[how]
        return evaluate(model, num_samples)

    return my_eval


@pytest.mark.parametrize(
    ("how", "fail_on", "match"),
    [
        ("raise", 1, r"'my_eval' raised RuntimeError: dataset went away during the FP32 evaluation"),
        ("raise", 4, r"'my_eval' raised RuntimeError: dataset went away during phase 1 \(sensitivity of group"),
        ("nan", 3, r"'my_eval' returned nan during phase 1 \(baseline"),
        ("inf", 2, r"returned inf during the baseline evaluation"),
        ("str", 4, r"returned '0.9' during phase 1"),
        ("none", 10, r"returned None during phase 2"),
    ],
)
def test_eval_callback_errors_name_the_callback_and_phase_and_restore_the_sim(
    small: tuple[QuantSim, Any], how: str, fail_on: int, match: str
) -> None:
    sim, evaluate = small
    before = _state(sim)
    training = sim.model.training
    with pytest.raises(EvalCallbackError, match=match):
        choose_mixed_precision(sim, ["w8a16", "w8a8", "w4a8"], _failing(evaluate, fail_on, how), 1.0, num_samples_for_phase_1=8)
    assert _state(sim) == before
    assert sim.model.training == training


def test_uncalibrated_sim() -> None:
    torch.manual_seed(0)
    model = ResidualTwoHeads().eval()
    x = torch.randn(8, 3, 8, 8)
    evaluate = output_fidelity(model, x)
    sim = QuantSim(model, x[:1])
    with pytest.raises(EncodingsNotComputedError, match="compute_encodings"):
        choose_mixed_precision(sim, ["w8a8", "w4a8"], evaluate, 0.01)
    result = choose_mixed_precision(sim, ["w8a8", "w4a8"], evaluate, 1.0, forward_pass_callback=[x], fp32_accuracy=0.0)
    assert result.target_met and result.relative_bops == pytest.approx(0.5)


def test_set_mixed_precision_checks_names_and_groups(small: tuple[QuantSim, Any]) -> None:
    sim, _ = small
    with pytest.raises(InvalidInputError, match=r"'head_c'.*not a quantized layer"):
        set_mixed_precision(sim, {"head_c": "w4a8"})
    with pytest.raises(InvalidInputError, match=r"group 'head_a' must share one candidate.*head_a=w4a8, head_b=w8a8"):
        set_mixed_precision(sim, {"head_a": "w4a8", "head_b": "w8a8"})
    set_mixed_precision(sim, {"head_a": "w4a8", "head_b": "w4a8"})
    assert sim.param_quantizer("head_b").bitwidth == 4
    assert sim.param_quantizer("stem").bitwidth == 8


def test_apply_with_a_config_object(small: tuple[QuantSim, Any]) -> None:
    sim, evaluate = small
    data = {"candidates": ["w8a8", "w4a4"], "num_samples_for_phase_1": 4, "phase2_search": "linear"}
    config = MixedPrecisionConfig.from_dict(data)
    result = apply_mixed_precision(sim, config, eval_callback=evaluate, allowed_accuracy_drop=0.05)
    assert len(result.evaluated) == len(result.groups) + 1  # linear: every prefix (one move per group here)
    assert result.target_met and result.accuracy >= result.fp32_accuracy - 0.05
    assert result.n_eval_calls == 1 + 1 + 1 + len(result.groups) + len(result.groups)  # fp32, base, base@phase1, phase 1, phase 2


# -- AdaRound --------------------------------------------------------------------------------------------
def _fake_adaround(sim: QuantSim, layer: str) -> torch.Tensor:
    """A rounding like AdaRound leaves (0/1 per weight; here: round up everywhere), frozen."""
    q = sim.param_quantizer(layer)
    assert q.scale is not None
    q.rounding = torch.ones_like(sim.float_weight(layer))
    q.frozen = True
    return q.rounding.clone()


def test_adaround_comes_back_with_the_original_bit_width(small: tuple[QuantSim, Any]) -> None:
    sim, _ = small
    rounding = _fake_adaround(sim, "body")
    before = _state(sim)
    w8a8, w4a8 = parse_candidate("w8a8"), parse_candidate("w4a8")
    groups = find_quantizer_groups(sim)
    precisions = GroupPrecisions(sim, groups)
    precisions.apply({"body": w4a8})
    assert sim.param_quantizer("body").rounding is None and sim.param_quantizer("body").bitwidth == 4
    precisions.apply({"body": w8a8})
    q = sim.param_quantizer("body")
    assert q.rounding is not None and torch.equal(q.rounding, rounding) and q.frozen
    assert _state(sim) == before


def test_amp_after_adaround_logs_what_it_kept(small: tuple[QuantSim, Any], caplog: pytest.LogCaptureFixture) -> None:
    sim, evaluate = small
    _fake_adaround(sim, "body")
    _fake_adaround(sim, "stem")
    with caplog.at_level(logging.INFO, logger="aq_search.amp"):
        result = choose_mixed_precision(sim, ["w8a8", "w4a8"], evaluate, 10.0, fp32_accuracy=0.0)
    assert result.relative_bops == pytest.approx(0.5)  # everything lowered
    assert sim.param_quantizer("body").rounding is None
    assert "AdaRound rounding of 2 layer(s) was dropped" in caplog.text
    caplog.clear()
    torch.manual_seed(0)
    model = ResidualTwoHeads().eval()
    x = torch.randn(16, 3, 8, 8)
    sim2, evaluate = calibrated(model, x), output_fidelity(model, x)
    _fake_adaround(sim2, "body")
    with caplog.at_level(logging.INFO, logger="aq_search.amp"):
        choose_mixed_precision(sim2, ["w8a16", "w8a8"], evaluate, 10.0, fp32_accuracy=0.0)
    assert sim2.param_quantizer("body").rounding is not None  # weights stay 8-bit: AdaRound kept
    assert "every AdaRound rounding was kept" in caplog.text


# -- plots -------------------------------------------------------------------------------------------------
def test_plots(small: tuple[QuantSim, Any], tmp_path: Any) -> None:
    sim, evaluate = small
    result = choose_mixed_precision(sim, ["w8a8", "w4a8", "w2a8"], evaluate, 0.05, phase2_search="linear", progress=False)
    pytest.importorskip("matplotlib")
    png = tmp_path / "front.png"
    fig = result.plot(str(png))
    assert png.stat().st_size > 1000
    assert fig.axes[0].get_xlabel().startswith("BOPs")
    pytest.importorskip("plotly")
    html = tmp_path / "front.html"
    pfig = result.plot(str(html), backend="plotly")
    assert html.exists() and len(pfig.data) == 3
    with pytest.raises(InvalidInputError, match="'backend' parameter"):
        result.plot(backend="bokeh")


def test_conv_linear_everything_lowered_when_free(tmp_path: Any) -> None:
    torch.manual_seed(0)
    model = ConvLinear().eval()
    x = torch.randn(8, 3, 8, 8)
    sim = calibrated(model, x)
    result = choose_mixed_precision(sim, ["w8a8", "w4a8"], output_fidelity(model, x), 1.0, fp32_accuracy=0.0)
    assert result.relative_bops == pytest.approx(0.5)
    assert result.relative_size == pytest.approx(0.5)
    assert dict(result.config) == {"conv": "w4a8", "fc": "w4a8"}
    assert pickle.loads(pickle.dumps(result)) == result  # results travel (Optuna user attributes, workers)


def test_refinement_recovers_moves_hidden_behind_a_harmful_one(digits: DigitsCase, folded_digits: nn.Module) -> None:
    """Digits at W4A4 per-channel: the first move phase 1 proposes breaks the target on the full set, so the
    binary search lowers nothing; trying the later moves one by one finds cheaper configs that meet it."""
    fp32 = digits.eval_callback(folded_digits)
    kwargs: dict[str, Any] = {"fp32_accuracy": fp32, "progress": False}
    sim = digits_sim(digits, folded_digits, per_channel=True)
    plain = choose_mixed_precision(sim, ["w8a8", "w4a4"], digits.eval_callback, 0.01, **kwargs)
    refined = choose_mixed_precision(sim, ["w8a8", "w4a4"], digits.eval_callback, 0.01, refine_evals=4, **kwargs)
    assert refined.target_met and plain.target_met
    assert refined.relative_bops < plain.relative_bops
    assert refined.n_eval_calls <= plain.n_eval_calls + 4
    assert len(refined.evaluated) > len(plain.evaluated)
    _monotone_front(refined)


def _monotone_front(result: Any) -> None:
    costs = [p.relative_cost for p in result.pareto]
    accs = [p.accuracy for p in result.pareto]
    assert costs == sorted(costs, reverse=True) and accs == sorted(accs, reverse=True)


def test_choose_with_a_config_object(small: tuple[QuantSim, Any]) -> None:
    sim, evaluate = small
    config = MixedPrecisionConfig(candidates=("w8a8", "w4a8"), num_samples_for_phase_1=4, phase2_search="linear")
    result = choose_mixed_precision(sim, ["w8a8", "w4a8"], evaluate, 0.05, config=config, num_samples_for_phase_1=4)
    assert len(result.evaluated) == len(result.groups) + 1  # linear, from the config
    with pytest.raises(InvalidInputError, match=r"must match config\.candidates"):
        choose_mixed_precision(sim, ["w8a8", "w2a8"], evaluate, 0.05, config=config)
    with pytest.raises(InvalidInputError, match=r"'cost' parameter of choose_mixed_precision \('size'\) contradicts"):
        choose_mixed_precision(sim, ["w8a8", "w4a8"], evaluate, 0.05, config=config, cost="size")


def test_after_real_adaround_lowered_layers_get_it_back(digits: DigitsCase, folded_digits: nn.Module) -> None:
    """W4 with AdaRound, candidates W8/W4: the baseline (W8) cannot use the 4-bit rounding, but every layer AMP
    lowers back to W4 gets its AdaRound rounding again: the all-W4 point scores exactly what AdaRound scored."""
    adaround = pytest.importorskip("aq_search.techniques._adaround")
    sim = QuantSim(folded_digits, digits.dummy_input, quant_scheme="tf", default_param_bw=4, per_channel=True)
    sim.compute_encodings(digits.calibration_batches)
    adaround.apply_adaround(sim, digits.calibration_batches, adaround.AdaRoundParams(num_batches=2, num_iterations=100))
    adarounded = digits.eval_callback(sim.model)
    result = choose_mixed_precision(sim, ["w8a8", "w4a8"], digits.eval_callback, 0.005, phase2_search="linear", progress=False)
    all_w4 = min(result.evaluated, key=lambda p: p.relative_cost)
    assert all_w4.relative_cost == pytest.approx(0.5)
    assert all_w4.accuracy == adarounded
    for layer, cand in result.config.items():
        assert (sim.param_quantizer(layer).rounding is not None) == (cand == "w4a8")
