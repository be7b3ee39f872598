"""4-bit weights as ONNX INT4/UINT4 (opset 21): smaller than int8 containers, the same outputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from aq_search import InvalidInputError, QuantSim, export_onnx
from aq_search.examples.digits import DigitsCase

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def w4a8(digits: DigitsCase) -> QuantSim:
    sim = QuantSim(digits.model, digits.dummy_input, default_param_bw=4, default_output_bw=8)
    sim.compute_encodings(digits.calibration_batches)
    return sim


def _run(path: str, name: str, x: np.ndarray) -> np.ndarray:
    out: np.ndarray = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {name: x})[0]
    return out


def test_int4_file_is_smaller_and_bit_identical(w4a8: QuantSim, digits: DigitsCase, tmp_path: Path) -> None:
    x = digits.split.test_x[:512]
    int4 = export_onnx(w4a8, digits.dummy_input, tmp_path / "int4.onnx", validation_inputs=x)
    int8 = export_onnx(w4a8, digits.dummy_input, tmp_path / "int8.onnx", int4_weights=False, opset=21, validation_inputs=x)
    assert int4.opset == 21 and int8.opset == 21  # same opset: only the storage differs
    model = onnx.load(int4.path)
    assert model.ir_version >= 10
    types = {i.name: i.data_type for i in model.graph.initializer}
    weights = [n for n in types if n.endswith(".weight_quantized")]
    assert weights and all(types[n] == onnx.TensorProto.INT4 for n in weights)
    assert all(types[n.replace("_quantized", "_zero_point")] == onnx.TensorProto.INT4 for n in weights)
    containers = {i.name: i.data_type for i in onnx.load(int8.path).graph.initializer}
    assert all(containers[n] == onnx.TensorProto.INT8 for n in weights)
    # the weights' bytes halve (two 4-bit values per byte); the file shrinks by about that
    n_weights = sum(int(np.prod(i.dims)) for i in model.graph.initializer if i.name in weights)
    assert os.path.getsize(int8.path) - os.path.getsize(int4.path) >= 0.4 * n_weights
    a, b = _run(int4.path, int4.input_names[0], x.numpy()), _run(int8.path, int8.input_names[0], x.numpy())
    assert np.array_equal(a, b)
    for export in (int4, int8):
        assert export.validation is not None and export.validation.top1_agreement == 1.0


def test_int4_needs_opset_21(w4a8: QuantSim, digits: DigitsCase, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"int4_weights=True needs opset >= 21.*Fix"):
        export_onnx(w4a8, digits.dummy_input, tmp_path / "m.onnx", opset=17, int4_weights=True, validate=False)
    legacy = export_onnx(w4a8, digits.dummy_input, tmp_path / "legacy.onnx", opset=13, validate=False)  # int8 containers
    types = {i.data_type for i in onnx.load(legacy.path).graph.initializer}
    assert legacy.opset == 13 and onnx.TensorProto.INT4 not in types
    with pytest.raises(InvalidInputError, match="int4_weights"):
        export_onnx(w4a8, digits.dummy_input, tmp_path / "m.onnx", int4_weights="yes", validate=False)  # type: ignore[arg-type]


def test_8_bit_weights_stay_int8(digits: DigitsCase, tmp_path: Path) -> None:
    sim = QuantSim(digits.model, digits.dummy_input)
    sim.compute_encodings(digits.calibration_batches)
    export = export_onnx(sim, digits.dummy_input, tmp_path / "w8.onnx", validate=False)
    assert export.opset == (18 if export.exporter == "dynamo" else 17)  # nothing 4-bit: the default opset


def test_validation_providers(w4a8: QuantSim, digits: DigitsCase, tmp_path: Path) -> None:
    from aq_search import validate_onnx

    export = export_onnx(w4a8, digits.dummy_input, tmp_path / "p.onnx", validate=False)
    x = digits.split.test_x[:64]
    v = validate_onnx(export.path, w4a8, x, providers="available")
    assert v.providers[-1] == "CPUExecutionProvider" and set(v.providers) <= set(ort.get_available_providers())
    assert v.top1_agreement == 1.0
    with pytest.raises(InvalidInputError, match=r"NoSuchExecutionProvider.*available"):
        validate_onnx(export.path, w4a8, x, providers=["NoSuchExecutionProvider"])
