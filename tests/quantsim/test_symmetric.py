"""Symmetric signed activation quantizers (zero point 0): exact against torch's fused kernels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aq_search import InvalidInputError, QuantSim
from aq_search.examples.digits import DigitsCase, digits_case
from aq_search.quantsim import FakeQuantizer


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsCase:
    return digits_case(tmp_path_factory.mktemp("digits"))


def _inputs_of(sim: QuantSim, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What each enabled activation quantizer receives on ``x``."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name, q in sim.activation_quantizers.items():
        if q.enabled:
            hooks.append(q.register_forward_hook(lambda _m, args, _out, n=name: seen.__setitem__(n, args[0].detach().clone())))
    try:
        with torch.no_grad():
            sim.model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("scheme", ["tf", "tf_enhanced", "percentile", "mse"])
def test_symmetric_activations_match_torch_int8_kernel(digits: DigitsCase, scheme: str) -> None:
    sim = QuantSim(digits.model, digits.dummy_input, quant_scheme=scheme, activation_symmetric=True)
    sim.compute_encodings(digits.calibration_batches)
    x = digits.split.test_x[:200]
    inputs = _inputs_of(sim, x)
    assert inputs, "no activation quantizer ran"
    for name, inp in inputs.items():
        q = sim.activation_quantizers[name]
        assert q.symmetric and q.quant_range == (-128, 127), name
        assert q.zero_point is not None and q.scale is not None and int(q.zero_point[0]) == 0, name
        clamped = inp if q.fused_clamp is None else torch.clamp(inp, *q.fused_clamp)  # a folded ReLU/ReLU6
        ref = torch.fake_quantize_per_tensor_affine(clamped, float(q.scale[0]), 0, -128, 127)
        with torch.no_grad():
            got = q(inp)
        assert torch.equal(got, ref), f"{name} ({scheme}) differs from torch.fake_quantize_per_tensor_affine"


@pytest.mark.parametrize("bitwidth", [4, 8, 16])
@pytest.mark.parametrize("numel", [1000, 3 << 18])  # small tensors, and the chunked fast path
def test_symmetric_quantizer_n_bit_matches_torch(bitwidth: int, numel: int) -> None:
    torch.manual_seed(0)
    q = FakeQuantizer(kind="activation", bitwidth=bitwidth, symmetric=True, scheme="tf")
    calib = torch.randn(numel) * 3.0 + 0.5
    q.start_observing()
    q(calib)
    q.stop_observing()
    q.compute_encoding()
    assert q.scale is not None and q.zero_point is not None
    qmin, qmax = -(2 ** (bitwidth - 1)), 2 ** (bitwidth - 1) - 1
    assert q.quant_range == (qmin, qmax) and int(q.zero_point[0]) == 0
    absmax = float(calib.abs().max())
    assert float(q.scale[0]) == pytest.approx(absmax / qmax, rel=1e-6)
    x = torch.randn(numel) * 4.0  # some values clip
    ref = torch.fake_quantize_per_tensor_affine(x, float(q.scale[0]), 0, qmin, qmax)
    with torch.no_grad():
        assert torch.equal(q(x), ref)
    x.requires_grad_(True)
    assert torch.equal(q(x).detach(), ref)  # the autograd path too


def test_symmetric_encodings_round_trip_and_bitwidth_change(digits: DigitsCase, tmp_path: Path) -> None:
    sim = QuantSim(digits.model, digits.dummy_input, activation_symmetric=True)
    sim.compute_encodings(digits.calibration_batches)
    sim.set_bitwidth("fc", output_bw=4)  # what AMP does: the new encoding stays symmetric
    fc = sim.output_quantizer("fc")
    assert fc.symmetric and fc.quant_range == (-8, 7) and fc.zero_point is not None and int(fc.zero_point[0]) == 0
    path = tmp_path / "enc.json"
    sim.export_encodings(path)
    data = json.loads(path.read_text())
    assert data["quantizer_args"]["activation_symmetric"] is True
    entry = data["activation_encodings"]["fc"][0]
    assert entry["is_symmetric"] == "True" and entry["offset"] == -8 and entry["bitwidth"] == 4
    fresh = QuantSim(digits.model, digits.dummy_input)  # asymmetric by default: the file decides
    fresh.load_encodings(path)
    assert fresh.output_quantizer("fc").symmetric
    x = digits.split.test_x[:300]
    with torch.no_grad():
        assert torch.equal(sim.model(x), fresh.model(x))


def test_symmetric_w8a8_keeps_digits_accuracy(digits: DigitsCase) -> None:
    fp32 = digits.eval_callback(digits.model)
    sim = QuantSim(digits.model, digits.dummy_input, activation_symmetric=True)
    sim.compute_encodings(digits.calibration_batches)
    # ReLU6 outputs use half of the signed grid (7 bits): a larger but bounded loss than asymmetric 8 bits
    assert digits.eval_callback(sim.model) >= fp32 - 0.03


def test_activation_symmetric_must_be_bool(digits: DigitsCase) -> None:
    with pytest.raises(InvalidInputError, match="activation_symmetric"):
        QuantSim(digits.model, digits.dummy_input, activation_symmetric="yes")  # type: ignore[arg-type]
