"""ONNX export: the QDQ model reproduces the sim in onnxruntime; FP32 model and encodings side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from aq_search import EncodingsNotComputedError, InvalidInputError, QuantSim
from aq_search.examples.digits import DigitsCase
from aq_search.export import OnnxExport, OnnxExportError, export_onnx, validate_onnx

from .conftest import FunctionalDigamma, TwoInputs, WithDigamma


def _initializers(path: str) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer}


def _ops(path: str) -> list[str]:
    return [n.op_type for n in onnx.load(path).graph.node]


def _dequantized_weight(inits: dict[str, np.ndarray], name: str, axis: int | None, ndim: int) -> np.ndarray:
    q = inits[f"{name}_quantized"].astype(np.int64)
    scale = inits[f"{name}_scale"].astype(np.float32)
    zp = inits[f"{name}_zero_point"].astype(np.int64)
    shape = [1] * ndim
    if axis is not None:
        shape[axis] = -1
    return ((q - zp.reshape(shape)).astype(np.float32) * scale.reshape(shape)).astype(np.float32)


def _sim_weight(sim: QuantSim, layer: str) -> np.ndarray:
    with torch.no_grad():
        return sim.layer(layer).weight.detach().numpy()


def _run(path: str, *inputs: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {m.name: t.numpy() for m, t in zip(session.get_inputs(), inputs)}
    return session.run(None, feeds)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def w8a8(digits: DigitsCase, tmp_path_factory: pytest.TempPathFactory) -> tuple[QuantSim, OnnxExport]:
    sim = QuantSim(digits.model, digits.dummy_input, default_param_bw=8, default_output_bw=8)
    sim.compute_encodings(digits.calibration_batches)
    out = tmp_path_factory.mktemp("w8a8") / "digits.onnx"
    return sim, export_onnx(sim, None, out, validation_inputs=digits.split.test_x)


def test_w8a8_files_and_agreement(w8a8: tuple[QuantSim, OnnxExport], digits: DigitsCase) -> None:
    sim, export = w8a8
    for path in (export.path, export.fp32_path, export.encodings_path):
        assert Path(path).is_file()
    assert Path(export.fp32_path).name == "digits_fp32.onnx"
    assert Path(export.encodings_path).name == "digits_fp32.encodings.json"
    assert export.opset == (18 if export.exporter == "dynamo" else 17)  # the dynamo exporter writes opset >= 18
    assert export.input_names == ("x",) and export.output_names == ("output",)
    assert export.num_quantized_weights == len(sim.param_quantizers)
    assert export.num_quantized_activations == sum(q.enabled for q in sim.activation_quantizers.values())
    v = export.validation
    assert v is not None and v.num_samples == len(digits.split.test_x)
    assert v.top1_agreement is not None and v.top1_agreement >= 0.99
    assert v.max_error_in_quanta is not None and v.max_error_in_quanta <= 1.0 + 1e-3
    assert v.exact_fraction > 0.99


def test_w8a8_weights_are_int8_and_exact(w8a8: tuple[QuantSim, OnnxExport]) -> None:
    sim, export = w8a8
    inits = _initializers(export.path)
    model = onnx.load(export.path)
    dq_axis = {
        n.output[0]: next((a.i for a in n.attribute if a.name == "axis"), None)
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
    }
    for name, q in sim.param_quantizers.items():
        layer = name.rpartition(".")[0]
        assert inits[f"{name}_quantized"].dtype == np.int8
        assert dq_axis[f"{name}_dequantized"] == q.axis == 0
        np.testing.assert_array_equal(
            _dequantized_weight(inits, name, q.axis, inits[f"{name}_quantized"].ndim), _sim_weight(sim, layer)
        )
    # activations: uint8 zero points, one QuantizeLinear per enabled quantizer
    assert _ops(export.path).count("QuantizeLinear") == export.num_quantized_activations
    assert inits["x_zero_point"].dtype == np.uint8


def test_w8a8_dynamic_batch(w8a8: tuple[QuantSim, OnnxExport], digits: DigitsCase) -> None:
    sim, export = w8a8
    for n in (1, 5):
        x = digits.split.test_x[:n]
        (got,) = _run(export.path, x)
        with torch.no_grad():
            ref = sim.model(x).numpy()
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= float(sim.output_quantizer("fc").scale[0]) * 1.0001


def test_fp32_model_and_encodings(w8a8: tuple[QuantSim, OnnxExport], digits: DigitsCase) -> None:
    sim, export = w8a8
    x = digits.split.test_x[:64]
    (got,) = _run(export.fp32_path, x)
    with torch.no_grad():
        ref = digits.model(x).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert "QuantizeLinear" not in _ops(export.fp32_path)

    data = json.loads(Path(export.encodings_path).read_text())
    model = onnx.load(export.fp32_path)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    tensors = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    assert set(data["activation_encodings"]) <= tensors
    assert set(data["param_encodings"]) <= set(inits)
    assert data["activation_encodings"]["x"] == sim.activation_quantizers["x"].encoding_dict()
    # the model output's encoding is on the output tensor itself
    assert export.tensor_names["fc"] == "output" and "output" in data["activation_encodings"]
    for name, q in sim.param_quantizers.items():
        onnx_name = export.tensor_names[name]
        assert onnx_name == name
        assert len(data["param_encodings"][onnx_name]) == inits[onnx_name].shape[q.axis or 0]
    assert len(data["activation_encodings"]) == export.num_quantized_activations


@pytest.fixture(scope="module")
def mixed(digits: DigitsCase, tmp_path_factory: pytest.TempPathFactory) -> tuple[QuantSim, OnnxExport]:
    """W4A8 with other bit-widths, float16, a disabled quantizer and an AdaRound-like rounding."""
    sim = QuantSim(digits.model, digits.dummy_input, default_param_bw=4, default_output_bw=8, quant_scheme="tf")
    sim.compute_encodings(digits.calibration_batches)
    sim.set_bitwidth("features.0", param_bw=8)
    sim.set_bitwidth("features.3", param_bw=2)
    sim.set_bitwidth("features.10", param_bw=16, param_dtype="float")
    sim.set_bitwidth("fc", param_bw=12, output_bw=10)
    sim.set_bitwidth("features.2", output_bw=4)
    sim.set_bitwidth("features.5", output_bw=16)
    sim.set_bitwidth("features.9", output_bw=6)
    sim.set_bitwidth("features.12", output_bw=16, output_dtype="float")
    sim.set_enabled("pool", output=False)
    q = sim.param_quantizer("features.6")
    g = torch.Generator().manual_seed(0)
    q.rounding = (torch.rand(sim.float_weight("features.6").shape, generator=g) > 0.5).to(torch.uint8)
    q.frozen = True
    out = tmp_path_factory.mktemp("mixed") / "mixed.onnx"
    return sim, export_onnx(sim, digits.dummy_input, out, validation_inputs=digits.split.test_x)


def test_mixed_precision_agreement(mixed: tuple[QuantSim, OnnxExport]) -> None:
    _, export = mixed
    assert export.opset == 21  # int16/uint16 QuantizeLinear/DequantizeLinear
    v = export.validation
    assert v is not None and v.top1_agreement is not None
    assert v.top1_agreement >= 0.99
    assert v.max_error_in_quanta is not None and v.max_error_in_quanta <= 2.0 + 1e-3
    assert export.float_weights == ("features.10.weight",)
    assert v.disabled_optimizers == ("WeightBiasQuantization",)


def test_mixed_precision_storage(mixed: tuple[QuantSim, OnnxExport]) -> None:
    sim, export = mixed
    inits = _initializers(export.path)
    assert inits["features.0.weight_quantized"].dtype == np.int8
    w2 = inits["features.3.weight_quantized"]
    assert str(w2.dtype) == "int4" and w2.min() >= -2 and w2.max() <= 1  # 2 bits in INT4 storage (opset 21)
    assert inits["fc.weight_quantized"].dtype == np.int16
    assert inits["features.10.weight_fp16"].dtype == np.float16
    for layer in ("features.0", "features.3", "features.6", "fc"):
        name = f"{layer}.weight"
        q = sim.param_quantizers[name]
        got = _dequantized_weight(inits, name, q.axis, inits[f"{name}_quantized"].ndim)
        np.testing.assert_array_equal(got, _sim_weight(sim, layer))  # AdaRound included
    model = onnx.load(export.path)
    t = export.qdq_tensor_names
    assert t["fc.weight"] == "fc.weight_dequantized" and t["features.2"] == export.tensor_names["features.2"]
    assert inits[t["features.5"] + "_zero_point"].dtype == np.uint16
    assert inits[t["fc"] + "_zero_point"].dtype == np.uint16
    assert inits[t["features.2"] + "_zero_point"].dtype == np.uint8
    # below 8 bits a Clip to the representable range comes first
    clips = {
        n.input[0]: (inits[n.input[1]], inits[n.input[2]])
        for n in model.graph.node
        if n.op_type == "Clip" and n.input[1] in inits
    }
    for name, bits in (("features.2", 4), ("features.9", 6)):
        q = sim.activation_quantizers[name]
        lo, hi = clips[t[name]]
        scale, zp = float(q.scale[0]), int(q.zero_point[0])
        assert lo == np.float32((0 - zp) * np.float32(scale)) and hi == np.float32((2**bits - 1 - zp) * np.float32(scale))
    assert t["features.12"] + "_fp16" in {o for n in model.graph.node for o in n.output}
    assert "pool" not in t  # disabled: no quantizer written


def test_mixed_fp32_model_has_adarounded_weights(mixed: tuple[QuantSim, OnnxExport]) -> None:
    sim, export = mixed
    inits = _initializers(export.fp32_path)
    np.testing.assert_array_equal(inits["features.6.weight"], _sim_weight(sim, "features.6"))
    np.testing.assert_array_equal(inits["features.0.weight"], sim.float_weight("features.0").detach().numpy())
    # a toolchain applying the encodings (round to nearest) gets AdaRound's integers back
    enc = json.loads(Path(export.encodings_path).read_text())["param_encodings"]["features.6.weight"]
    scale = np.array([e["scale"] for e in enc], dtype=np.float32).reshape(-1, 1, 1, 1)
    ints = np.clip(np.round(inits["features.6.weight"] / scale), -8, 7)
    np.testing.assert_array_equal(ints.astype(np.int8), _initializers(export.path)["features.6.weight_quantized"])
    assert enc[0]["bitwidth"] == 4


def test_two_inputs_and_nested_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TwoInputs().eval()
    batches = [(torch.randn(16, 6), torch.randn(16, 3)) for _ in range(3)]
    sim = QuantSim(model, batches[0])
    sim.compute_encodings(batches)
    export = export_onnx(sim, None, tmp_path / "two.onnx", validation_inputs=batches)
    assert export.input_names == ("a", "b")
    assert export.output_names == ("output_0", "output_1", "output_2")
    assert export.validation is not None and export.validation.num_samples == 48
    assert export.validation.max_error_in_quanta is not None and export.validation.max_error_in_quanta <= 1.0 + 1e-3
    named = export_onnx(
        sim, None, tmp_path / "named.onnx", input_names=["left", "right"], output_names=["prod", "sum", "gate"], validate=False
    )
    session = ort.InferenceSession(named.path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["left", "right"]
    assert [o.name for o in session.get_outputs()] == ["prod", "sum", "gate"]


def test_export_before_encodings(digits: DigitsCase, tmp_path: Path) -> None:
    sim = QuantSim(digits.model, digits.dummy_input)
    with pytest.raises(EncodingsNotComputedError, match=r"compute_encodings") as err:
        export_onnx(sim, None, tmp_path / "m.onnx")
    assert "features.0.weight" in str(err.value) or "'x'" in str(err.value)
    assert not (tmp_path / "m.onnx").exists()


def test_unsupported_module_is_named(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 8)
    sim = QuantSim(WithDigamma().eval(), x, leaf_modules=["act"])
    sim.compute_encodings([x])
    with pytest.raises(OnnxExportError, match=r"module 'act' \(Digamma\) uses aten::digamma"):
        export_onnx(sim, None, tmp_path / "m.onnx")


def test_unsupported_function_is_named(tmp_path: Path) -> None:
    x = torch.rand(2, 3, 8, 8)
    sim = QuantSim(FunctionalDigamma().eval(), x)
    sim.compute_encodings([x])
    with pytest.raises(OnnxExportError, match=r"'digamma'.*aten::digamma.*cannot express"):
        export_onnx(sim, None, tmp_path / "m.onnx")


def test_int16_needs_opset_21(w8a8: tuple[QuantSim, OnnxExport], tmp_path: Path) -> None:
    import copy

    sim = copy.deepcopy(w8a8[0])
    sim.set_bitwidth("fc", param_bw=12)
    with pytest.raises(InvalidInputError, match=r"opset=21"):
        export_onnx(sim, None, tmp_path / "m.onnx", opset=17)
    with pytest.raises(InvalidInputError, match=r"'opset' parameter"):
        export_onnx(sim, None, tmp_path / "m.onnx", opset=11)


def test_bad_arguments(w8a8: tuple[QuantSim, OnnxExport], digits: DigitsCase, tmp_path: Path) -> None:
    sim, export = w8a8
    bad: Any = object()
    with pytest.raises(InvalidInputError, match=r"'sim' parameter of export_onnx"):
        export_onnx(bad, None, tmp_path / "m.onnx")
    with pytest.raises(InvalidInputError, match=r"input_names"):
        export_onnx(sim, None, tmp_path / "m.onnx", input_names=["a", "b"], validate=False)
    with pytest.raises(InvalidInputError, match=r"'optimization_level' parameter"):
        validate_onnx(export.path, sim, digits.split.test_x, optimization_level="max")
    with pytest.raises(InvalidInputError, match=r"empty list"):
        validate_onnx(export.path, sim, [])


def test_validate_levels(w8a8: tuple[QuantSim, OnnxExport], digits: DigitsCase) -> None:
    sim, export = w8a8
    x = digits.split.test_x[:200]
    disabled = validate_onnx(export.path, sim, x, optimization_level="disabled")
    assert disabled.top1_agreement is not None and disabled.top1_agreement >= 0.99
    assert disabled.output_quantum == pytest.approx(float(sim.output_quantizer("fc").scale[0]))
    assert "top-1 agreement" in str(disabled)
    # the FP32 model against the float model: the sim with every quantizer off
    import copy

    float_sim = copy.deepcopy(sim)
    for q in list(float_sim.param_quantizers.values()) + list(float_sim.activation_quantizers.values()):
        q.enabled = False
    fp32 = validate_onnx(export.fp32_path, float_sim, [x[:100], x[100:]], batch_size=32)
    assert fp32.num_samples == 200 and fp32.top1_agreement == 1.0 and fp32.max_abs_error < 1e-4
