from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from aq_search import (
    CalibrationError,
    EncodingsNotComputedError,
    InvalidInputError,
    ModelPreparationError,
    QuantizerOverride,
    QuantSim,
)
from aq_search.examples.digits import DigitsCase, digits_case

from .conftest import FunctionalNet, TinyEncoder, encoder_inputs


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsCase:
    return digits_case(tmp_path_factory.mktemp("digits"))


def _calibrated(model: nn.Module, x: torch.Tensor, **kwargs: object) -> QuantSim:
    sim = QuantSim(model, x, **kwargs)  # type: ignore[arg-type]
    sim.compute_encodings(lambda m: m(x))
    return sim


def test_quantizers_are_placed_on_inputs_layers_and_ops(seeded: None) -> None:
    x = torch.randn(4, 3, 8, 8)
    sim = QuantSim(FunctionalNet().eval(), x)
    assert set(sim.param_quantizers) == {"conv1.weight", "conv2.weight", "linear.weight"}
    acts = sim.activation_quantizers
    assert acts["x"].enabled  # the model input
    assert not acts["conv1"].enabled, "conv1 feeds only a ReLU: fused"
    assert acts["relu"].enabled and acts["relu"].fused_clamp == (0.0, float("inf"))
    for name in ("conv2", "add", "cat", "mean", "linear"):
        assert acts[name].enabled, name
    assert sim.input_quantizers_of("conv2") == ["relu"]
    assert sim.param_quantizer("conv1").axis == 0 and sim.param_quantizer("conv1").symmetric
    assert not acts["relu"].symmetric


@pytest.mark.parametrize("scheme", ["tf", "tf_enhanced"])
def test_16_bit_matches_fp32(digits: DigitsCase, scheme: str) -> None:
    sim = QuantSim(digits.model, digits.dummy_input, default_param_bw=16, default_output_bw=16, quant_scheme=scheme)
    sim.compute_encodings(digits.calibration_batches)
    x = torch.cat(digits.calibration_batches)  # inside the calibrated ranges
    with torch.no_grad():
        ref, got = digits.model(x), sim.model(x)
    assert float((ref - got).abs().max() / ref.abs().max()) < 1e-3


def test_w8a8_keeps_accuracy_and_w2_breaks_it(digits: DigitsCase) -> None:
    fp32 = digits.eval_callback(digits.model)
    sim8 = QuantSim(digits.model, digits.dummy_input)
    sim8.compute_encodings(digits.calibration_batches)
    assert digits.eval_callback(sim8.model) >= fp32 - 0.01
    sim2 = QuantSim(digits.model, digits.dummy_input, default_param_bw=2, default_output_bw=2, per_channel=False)
    sim2.compute_encodings(digits.calibration_batches)
    assert digits.eval_callback(sim2.model) < fp32 - 0.1


def test_export_then_load_reproduces_outputs_bit_for_bit(digits: DigitsCase, tmp_path: Path) -> None:
    sim = QuantSim(digits.model, digits.dummy_input, default_param_bw=4, quant_scheme="percentile", percentile=99.9)
    sim.compute_encodings(digits.calibration_batches)
    sim.set_bitwidth("fc", param_bw=6, output_bw=12)
    sim.set_enabled("features.10", param=False)
    path = tmp_path / "enc.json"
    sim.export_encodings(path)
    data = json.loads(path.read_text())
    entry = data["param_encodings"]["features.0.weight"]
    assert len(entry) == 16 and {"bitwidth", "scale", "offset", "min", "max", "is_symmetric", "dtype"} <= set(entry[0])
    assert entry[0]["offset"] == -8 and entry[0]["is_symmetric"] == "True"
    assert "features.10.weight" not in data["param_encodings"]

    fresh = QuantSim(digits.model, digits.dummy_input)
    fresh.load_encodings(path)
    x = digits.split.test_x[:300]
    with torch.no_grad():
        assert torch.equal(sim.model(x), fresh.model(x))
    assert not fresh.param_quantizer("features.10").enabled
    assert fresh.param_quantizer("fc").bitwidth == 6


def test_load_encodings_errors(digits: DigitsCase, tmp_path: Path) -> None:
    sim = QuantSim(digits.model, digits.dummy_input)
    with pytest.raises(InvalidInputError, match="does not exist"):
        sim.load_encodings(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"activation_encodings": {"nope": []}, "param_encodings": {}}))
    with pytest.raises(InvalidInputError, match="nope"):
        sim.load_encodings(bad)


def test_bitwidth_and_scheme_validation(digits: DigitsCase) -> None:
    for bad in (1, 17, "8", 8.0, True):
        with pytest.raises(InvalidInputError, match="default_param_bw"):
            QuantSim(digits.model, digits.dummy_input, default_param_bw=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="Valid schemes: tf, tf_enhanced, percentile, mse"):
        QuantSim(digits.model, digits.dummy_input, quant_scheme="minmax_enhanced")
    with pytest.raises(InvalidInputError, match="param_bw"):
        QuantizerOverride(param_bw=20)


def test_calibration_errors_are_clear(digits: DigitsCase) -> None:
    sim = QuantSim(digits.model, digits.dummy_input)
    with pytest.raises(CalibrationError, match="saw no data"):
        sim.compute_encodings(lambda model: None)
    with pytest.raises(CalibrationError, match="saw no data"):
        sim.compute_encodings([])

    def broken(model: nn.Module) -> None:
        raise KeyError("labels")

    with pytest.raises(CalibrationError, match=r"calibration callback \(forward_pass_callback\) raised KeyError"):
        sim.compute_encodings(broken)
    with pytest.raises(InvalidInputError, match="callable forward_pass_callback"):
        sim.compute_encodings(3)  # type: ignore[arg-type]
    with pytest.raises(EncodingsNotComputedError, match="compute_encodings"):
        sim.model(digits.dummy_input)
    # the model is usable after a failed calibration once a good one runs
    sim.compute_encodings(digits.calibration_batches)
    sim.model(digits.dummy_input)


def test_nothing_to_quantize() -> None:
    with pytest.raises(ModelPreparationError, match="nothing to quantize"):
        QuantSim(nn.Sequential(nn.Flatten(), nn.Dropout()), torch.randn(2, 3))


def test_overrides_by_name_and_regex(digits: DigitsCase) -> None:
    sim = QuantSim(
        digits.model,
        digits.dummy_input,
        module_overrides={"fc": QuantizerOverride(param_bw=16), r"re:features\.1[03]": {"param_bw": 4, "output_bw": 6}},
    )
    assert sim.param_quantizer("fc").bitwidth == 16
    assert sim.param_quantizer("features.10").bitwidth == 4 and sim.param_quantizer("features.0").bitwidth == 8
    assert sim.output_quantizer("features.13").bitwidth == 6
    with pytest.raises(InvalidInputError, match=r"Did you mean 'features\.1'"):
        QuantSim(digits.model, digits.dummy_input, module_overrides={"features.1O": {"param_bw": 4}})
    with pytest.raises(InvalidInputError, match="unknown key"):
        QuantSim(digits.model, digits.dummy_input, module_overrides={"fc": {"bits": 4}})


def test_bitwidth_change_and_scheme_switch_need_no_new_data(digits: DigitsCase) -> None:
    sim = QuantSim(digits.model, digits.dummy_input, quant_scheme="tf")
    sim.compute_encodings(digits.calibration_batches)
    x = digits.split.test_x[:200]
    with torch.no_grad():
        ref = digits.model(x)
        err8 = float((sim.model(x) - ref).pow(2).mean())
        sim.set_bitwidth("features.8", output_bw=3)
        err3 = float((sim.model(x) - ref).pow(2).mean())
    assert err3 > 2 * err8
    # switching scheme recomputes from the kept histograms: same as calibrating afresh with it
    sim.set_bitwidth("features.8", output_bw=8)
    sim.set_quant_scheme(param_scheme="mse", activation_scheme="tf_enhanced")
    fresh = QuantSim(digits.model, digits.dummy_input, param_quant_scheme="mse", activation_quant_scheme="tf_enhanced")
    fresh.compute_encodings(digits.calibration_batches)
    with torch.no_grad():
        assert torch.equal(sim.model(x), fresh.model(x))


def test_transformer_with_two_inputs_and_dict_output(seeded: None) -> None:
    model = TinyEncoder().eval()
    ids, mask = encoder_inputs(batch=8)
    sim = QuantSim(model, (ids, mask))
    sim.compute_encodings(lambda m: m(ids, mask))
    assert "ids" not in sim.activation_quantizers, "integer inputs are not quantized"
    assert sim.activation_quantizers["mask"].enabled
    for name in ("tok", "q", "matmul", "softmax", "ln1", "gelu", "cls"):
        assert name in sim.module_names(), name
    assert sim.param_quantizer("tok").axis is None, "embedding tables are quantized per tensor"
    with torch.no_grad():
        ref, got = model(ids, mask), sim.model(ids, mask)
    assert set(got) == {"logits", "hidden"}
    rel = float((ref["logits"] - got["logits"]).abs().max() / ref["logits"].abs().max())
    assert 0 < rel < 0.1


def test_deepcopy_is_independent(digits: DigitsCase) -> None:
    sim = QuantSim(digits.model, digits.dummy_input)
    sim.compute_encodings(digits.calibration_batches)
    clone = copy.deepcopy(sim)
    clone.set_bitwidth("features.0", param_bw=2)
    assert sim.param_quantizer("features.0").bitwidth == 8
    x = digits.split.test_x[:50]
    with torch.no_grad():
        assert not torch.equal(sim.model(x), clone.model(x))
