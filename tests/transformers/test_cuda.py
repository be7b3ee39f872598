"""Everything follows the model's device: each test runs on the CPU, and on a GPU when there is one (``-m cuda``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from aq_search import AdaRoundCache, AdaRoundParams, BiasCorrectionConfig, InvalidInputError, QuantSim
from aq_search.export import export_onnx
from aq_search.techniques import apply_adaround, correct_bias

from .conftest import hidden, tiny_model

CUDA = pytest.param(
    "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
)
DEVICES = ["cpu", CUDA]


def _on(device: str, kind: str = "bert") -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    model, inputs = tiny_model(kind)
    return model.to(device), {k: v.to(device) for k, v in inputs.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_quantsim_calibrates_and_runs_on_the_device(kind: str, device: str) -> None:
    model, inputs = _on(device, kind)
    sim = QuantSim(model, inputs, default_param_bw=8, default_output_bw=8)
    sim.compute_encodings([inputs])
    with torch.no_grad():
        out, ref = hidden(sim.model(**inputs)), hidden(model(**inputs))
    assert out.device.type == device
    assert all(p.device.type == device for p in sim.model.parameters())
    assert float(F.cosine_similarity(out.flatten(), ref.flatten(), dim=0)) >= 0.99


@pytest.mark.parametrize("device", DEVICES)
def test_adaround_cache_hit_and_bias_correction_on_the_device(tmp_path: Path, device: str) -> None:
    model, inputs = _on(device)
    params = AdaRoundParams(num_batches=1, num_iterations=20)
    cache = AdaRoundCache(tmp_path / "cache")
    outs = []
    for _ in range(2):  # the second run loads every rounding from the (CPU) cache
        sim = QuantSim(model, inputs, default_param_bw=4, default_output_bw=8)
        sim.compute_encodings([inputs])
        apply_adaround(sim, [inputs], params, cache=cache)
        correct_bias(sim, [inputs], BiasCorrectionConfig(num_batches=1))
        with torch.no_grad():
            outs.append(hidden(sim.model(**inputs)))
    assert cache.hits > 0
    assert all(q.rounding is None or q.rounding.device.type == device for q in sim.param_quantizers.values())
    torch.testing.assert_close(outs[0], outs[1])


@pytest.mark.parametrize("device", DEVICES)
def test_onnx_export_from_a_sim_on_the_device(tmp_path: Path, device: str) -> None:
    pytest.importorskip("onnxruntime")
    model, inputs = _on(device)
    sim = QuantSim(model, inputs)
    sim.compute_encodings([inputs])
    exported = export_onnx(sim, inputs, tmp_path / "m.onnx")
    assert exported.validation is not None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_on_another_device_name_both() -> None:
    model, inputs = _on("cuda")
    sim = QuantSim(model, inputs)

    with pytest.raises(InvalidInputError, match=r"cuda.*cpu"):
        sim.compute_encodings([{k: v.cpu() for k, v in inputs.items()}])
