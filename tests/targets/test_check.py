"""For each deployment target: a search whose ONNX file keeps the target's rules, runs in onnxruntime and
agrees with the sim; and the checker catches models that break the rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch

from aq_search import AutoQuant, QuantSim, export_onnx
from aq_search.examples import imagenet
from aq_search.examples.digits import DigitsCase, digits_case
from aq_search.search import load_search_space
from aq_search.targets import check_onnx

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsCase:
    return digits_case(tmp_path_factory.mktemp("digits"))


def _fast(max_trials: int = 3) -> dict[str, Any]:
    return {**load_search_space("fast").to_dict(), "max_trials": max_trials, "n_startup_trials": 1}


@pytest.mark.parametrize(
    ("target", "param_bw", "output_bw"),
    [("generic", 8, 8), ("onnxruntime", 8, 8), ("onnxruntime", 4, 8), ("tensorrt", 8, 8), ("qnn", 8, 8), ("qnn", 4, 16)],
)
def test_search_for_target_exports_what_the_target_runs(
    digits: DigitsCase, tmp_path: Path, target: str, param_bw: int, output_bw: int
) -> None:
    aq = AutoQuant(
        digits.model,
        digits.dummy_input,
        digits.calibration_batches,
        digits.eval_callback,
        param_bw=param_bw,
        output_bw=output_bw,
        results_dir=tmp_path / "aq",
        search_space=_fast(),
        seed=0,
        target=target,
    )
    result = aq.optimize(allowed_accuracy_drop=0.02)
    symmetric = target == "tensorrt"
    assert all(q.symmetric == symmetric for q in result.sim.activation_quantizers.values() if q.enabled and q.dtype == "int")
    x = digits.split.test_x[:600]
    export = result.export_onnx(tmp_path / "model.onnx", validation_inputs=x)
    check = check_onnx(export.path, target)
    assert check.ok, str(check)
    assert check.num_weights == 6 and check.num_activations >= 8
    v = export.validation
    assert v is not None and v.top1_agreement is not None and v.top1_agreement >= 0.99, v
    types = {i.data_type for i in onnx.load(export.path).graph.initializer}
    if param_bw == 4:
        assert onnx.TensorProto.INT4 in types and export.opset >= 21
    if output_bw == 16:
        assert onnx.TensorProto.UINT16 in types
    if symmetric:
        assert onnx.TensorProto.UINT8 not in types and onnx.TensorProto.INT8 in types


@pytest.fixture(scope="module")
def asymmetric_w8a8(digits: DigitsCase, tmp_path_factory: pytest.TempPathFactory) -> str:
    sim = QuantSim(digits.model, digits.dummy_input)
    sim.compute_encodings(digits.calibration_batches)
    return export_onnx(sim, digits.dummy_input, tmp_path_factory.mktemp("asym") / "m.onnx", validate=False).path


def test_checker_rejects_uint8_activations_for_tensorrt(asymmetric_w8a8: str) -> None:
    assert check_onnx(asymmetric_w8a8, "onnxruntime").ok and check_onnx(asymmetric_w8a8, "qnn").ok
    check = check_onnx(asymmetric_w8a8, "tensorrt")
    assert not check.ok
    assert any("activation element type UINT8 is not run by tensorrt" in v for v in check.violations), str(check)
    assert len(check.violations) >= check.num_activations


def test_checker_catches_nonzero_symmetric_zero_point_axis_and_mismatched_pairs(asymmetric_w8a8: str) -> None:
    from onnx import numpy_helper

    model = onnx.load(asymmetric_w8a8)
    inits = {i.name: i for i in model.graph.initializer}
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    w_dq = next(n for n in dqs if len(inits[n.input[0]].dims) == 4)
    # a weight zero point that is not 0
    zp = inits[w_dq.input[2]]
    zp.CopyFrom(numpy_helper.from_array(np.ones(numpy_helper.to_array(zp).shape, dtype=np.int8), zp.name))
    # a per-channel axis that is not the Conv's output channel
    for a in w_dq.attribute:
        if a.name == "axis":
            a.i = 1
    # an activation pair whose DequantizeLinear uses another scale
    act_dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in inits)
    new_scale = numpy_helper.from_array(np.array(0.5, dtype=np.float32), "other_scale")
    model.graph.initializer.append(new_scale)
    act_dq.input[1] = "other_scale"
    check = check_onnx(model, "onnxruntime")
    text = str(check)
    assert "weight zero point must be 0" in text
    assert "per-channel axis 1 is not the output-channel axis 0 of Conv" in text
    assert "different scales or zero points" in text


def test_checker_rejects_4_bit_conv_weights_for_tensorrt(digits: DigitsCase, tmp_path: Path) -> None:
    sim = QuantSim(digits.model, digits.dummy_input, default_param_bw=4, activation_symmetric=True)
    sim.compute_encodings(digits.calibration_batches)
    export = export_onnx(sim, digits.dummy_input, tmp_path / "w4.onnx", validate=False)
    check = check_onnx(export.path, "tensorrt")
    assert any("a 4-bit weight feeds Conv" in v for v in check.violations), str(check)
    assert not any("feeds Gemm" in v for v in check.violations)  # the classifier's Linear may hold 4-bit weights


@pytest.mark.slow
@pytest.mark.skipif(not imagenet.is_available(), reason="EfficientNet-Lite0 packages not installed")
@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt", "qnn"])
def test_efficientnet_lite0_w8a8_search_for_target(tmp_path: Path, target: str) -> None:
    """EfficientNet-Lite0 W8A8, 20 labelled ImageNet photos, a 2-trial `fast` search per target."""
    model = imagenet.load_efficientnet_lite0()
    calib = imagenet.augmented_images(32, seed=1)
    images, _ = imagenet.imagenet_images()
    reference = imagenet.predict(model, images)

    def eval_callback(m: torch.nn.Module, num_samples: int | None = None) -> float:
        n = len(images) if num_samples is None else min(num_samples, len(images))
        return imagenet.agreement(imagenet.predict(m, images[:n]), reference[:n])

    aq = AutoQuant(
        model,
        calib[:1],
        [calib[i : i + 16] for i in range(0, len(calib), 16)],
        eval_callback,
        param_bw=8,
        output_bw=8,
        results_dir=tmp_path / "aq",
        search_space=_fast(max_trials=2),
        seed=0,
        target=target,
    )
    result = aq.optimize(allowed_accuracy_drop=0.05)
    export = result.export_onnx(tmp_path / "effnet.onnx", validation_inputs=images)
    check = check_onnx(export.path, target)
    assert check.ok, str(check)
    v = export.validation
    assert v is not None and v.top1_agreement is not None and v.top1_agreement >= 0.99, v
    print(f"\n{target}: accuracy {result.accuracy:.4f} (FP32 agreement), {v}")
