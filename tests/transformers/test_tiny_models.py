"""Prepare, QuantSim W8A8, ONNX export and a short AutoQuant on tiny models of six transformer families."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from aq_search import AutoQuant, QuantSim, validate_model
from aq_search.export import export_onnx

from .conftest import KINDS, hidden, tiny_model

pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("kind", KINDS)
def test_prepare_quantsim_w8a8_and_onnx(kind: str, tmp_path: Path) -> None:
    model, inputs = tiny_model(kind)
    report = validate_model(model, inputs)
    assert report.ok, str(report)
    assert report.front_end == "torch.export"
    assert report.num_weight_layers >= 8  # every Linear (GPT-2's Conv1D too) has a weight quantizer
    with torch.no_grad():
        reference = hidden(model(**inputs))
    sim = QuantSim(model, inputs, default_param_bw=8, default_output_bw=8)
    sim.compute_encodings([inputs])
    with torch.no_grad():
        out = sim.model(**inputs)
    assert type(out).__name__ == type(model(**inputs)).__name__  # the ModelOutput class survives
    cos = float(F.cosine_similarity(hidden(out).flatten(), reference.flatten(), dim=0))
    assert cos >= 0.99, cos
    exported = export_onnx(sim, inputs, tmp_path / "model.onnx")
    assert exported.validation is not None
    assert exported.validation.max_abs_error <= 0.05 * exported.validation.max_abs_output + 1e-3, exported.validation


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_autoquant_fast_space(kind: str, tmp_path: Path) -> None:
    model, inputs = tiny_model(kind)
    with torch.no_grad():
        reference = hidden(model(**inputs))

    def eval_callback(m: torch.nn.Module, num_samples: int | None = None) -> float:
        return float(F.cosine_similarity(hidden(m(**inputs)).flatten(), reference.flatten(), dim=0))

    aq = AutoQuant(model, inputs, [inputs], eval_callback, results_dir=tmp_path, search_space="fast", seed=0)
    result = aq.optimize(allowed_accuracy_drop=0.01, n_trials=2)
    assert result.accuracy >= 0.99, result.accuracy
