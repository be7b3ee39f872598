"""The dynamo exporter is the default; the TorchScript one stays available and writes the same model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from aq_search import InvalidInputError, OnnxExportError, QuantSim, export_onnx
from aq_search.examples.digits import DigitsCase

from .conftest import TwoInputs

ort = pytest.importorskip("onnxruntime")
needs_onnxscript = pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None, reason="onnxscript not installed")


@pytest.fixture(scope="module")
def w4a8(digits: DigitsCase) -> QuantSim:
    sim = QuantSim(digits.model, digits.dummy_input, default_param_bw=4, default_output_bw=8)
    sim.compute_encodings(digits.calibration_batches)
    sim.set_bitwidth("fc", output_bw=16)
    return sim


@needs_onnxscript
def test_dynamo_is_the_default_and_matches_torchscript(w4a8: QuantSim, digits: DigitsCase, tmp_path: Path) -> None:
    x = digits.split.test_x[:400]
    dyn = export_onnx(w4a8, digits.dummy_input, tmp_path / "dyn.onnx", validation_inputs=x)
    ts = export_onnx(w4a8, digits.dummy_input, tmp_path / "ts.onnx", exporter="torchscript", validation_inputs=x)
    assert dyn.exporter == "dynamo" and ts.exporter == "torchscript"
    assert dyn.opset == ts.opset == 21  # INT4 weights and 16-bit activations
    assert dyn.num_quantized_weights == ts.num_quantized_weights and dyn.num_quantized_activations == ts.num_quantized_activations
    for export in (dyn, ts):
        v = export.validation
        assert v is not None and v.top1_agreement == 1.0, v
    a = ort.InferenceSession(dyn.path).run(None, {dyn.input_names[0]: x.numpy()})[0]
    b = ort.InferenceSession(ts.path).run(None, {ts.input_names[0]: x.numpy()})[0]
    # both run the same Q/DQ graph; float ops may be ordered differently (e.g. a BatchNorm kept or folded)
    assert np.array_equal(a.argmax(1), b.argmax(1))
    quantum = float(w4a8.output_quantizer("fc").scale[0])
    print("max |dynamo - torchscript| in output steps:", float(np.abs(a - b).max()) / quantum)
    assert float(np.abs(a - b).max()) <= 4 * quantum


@needs_onnxscript
def test_dynamo_two_inputs_and_nested_outputs(tmp_path: Path) -> None:
    import torch

    model = TwoInputs().eval()
    a, b = torch.randn(8, 6), torch.randn(8, 3)
    sim = QuantSim(model, (a, b))
    sim.compute_encodings(lambda m: m(a, b))
    export = export_onnx(sim, (a, b), tmp_path / "two.onnx", exporter="dynamo", validation_inputs=[(a, b)])
    assert export.exporter == "dynamo" and len(export.input_names) == 2 and len(export.output_names) == 3
    assert export.validation is not None and export.validation.max_abs_error < 1e-5


def test_exporter_argument_is_checked(digits: DigitsCase, tmp_path: Path) -> None:
    w8a8 = QuantSim(digits.model, digits.dummy_input)
    w8a8.compute_encodings(digits.calibration_batches)
    with pytest.raises(InvalidInputError, match="'exporter'"):
        export_onnx(w8a8, digits.dummy_input, tmp_path / "m.onnx", exporter="fx", validate=False)
    with pytest.raises(OnnxExportError, match=r"exporter='dynamo'.*Fix"):
        export_onnx(w8a8, digits.dummy_input, tmp_path / "m.onnx", exporter="dynamo", opset=13, validate=False)
    old = export_onnx(w8a8, digits.dummy_input, tmp_path / "old.onnx", opset=13, validate=False)
    assert old.exporter == "torchscript" and old.opset == 13  # 'auto' falls back below opset 18
