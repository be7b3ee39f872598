"""PTQ technique speed on EfficientNet-Lite0 (CPU): BN fold, CLE, AdaRound per layer, bias correction.

AdaRound is timed on every quantized layer with ``--iterations`` iterations (default 200) and the
time is scaled to 1,000 iterations. Two figures per layer: the optimization alone, and the whole
per-layer cost (input caching, target, cache key, error report, optimization).

    OMP_NUM_THREADS=1 python benchmarks/bench_techniques.py [--iterations 200] [--images 32] [--batch-size 1024]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_quantsim import _time  # the same timing helper (this script's folder is on sys.path)

from aq_search import QuantSim
from aq_search.examples import imagenet
from aq_search.techniques import AdaRoundParams, _adaround, apply_adaround, correct_bias, equalize_model, fold_all_batch_norms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200, help="AdaRound iterations per layer (scaled to 1,000)")
    parser.add_argument("--images", type=int, default=32, help="calibration images (AdaRound caches their layer inputs)")
    parser.add_argument("--batch-size", type=int, default=1024, help="AdaRound samples (output positions) per iteration")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bits", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = imagenet.load_efficientnet_lite0()
    calib = imagenet.augmented_images(args.images, seed=1)
    batches = [calib[i : i + 16] for i in range(0, len(calib), 16)]
    dummy = calib[:1]
    print(f"EfficientNet-Lite0, {torch.get_num_threads()} thread(s), torch {torch.__version__}")

    fold = _time(lambda: fold_all_batch_norms(model, dummy), args.repeats)
    folded = fold_all_batch_norms(model, dummy)
    cle = _time(lambda: equalize_model(folded, dummy), args.repeats)
    print(f"fold_all_batch_norms   {fold:8.2f} s  (median of {args.repeats}; includes tracing the model)")
    print(f"equalize_model (CLE)   {cle:8.2f} s  (median of {args.repeats}; includes copying/re-preparing the model)")

    sim = QuantSim(folded, dummy, quant_scheme="tf", default_param_bw=args.bits, default_output_bw=8, per_channel=True)
    sim.compute_encodings(batches)
    optimize_seconds: dict[str, float] = {}
    original = _adaround._optimize

    def timed(*a: object, **k: object) -> torch.Tensor:
        start = time.perf_counter()
        out = original(*a, **k)  # type: ignore[arg-type]
        optimize_seconds[str(len(optimize_seconds))] = time.perf_counter() - start
        return out

    _adaround._optimize = timed  # type: ignore[assignment]
    try:
        params = AdaRoundParams(num_batches=len(batches), num_iterations=args.iterations, batch_size=args.batch_size)
        start = time.perf_counter()
        apply_adaround(sim, batches, params)
        total = time.perf_counter() - start
    finally:
        _adaround._optimize = original
    report = sim.model.meta["aq_search"]["adaround"]
    scale = 1000.0 / args.iterations
    opt = [s * scale for s in optimize_seconds.values()]
    whole = [r.seconds * scale for r in report.layers]
    print(
        f"AdaRound W{args.bits} per-channel, {len(report.layers)} layers, {args.images} images, batch {args.batch_size}, "
        f"{args.iterations} iterations (scaled to 1,000):"
    )
    med, top, total_opt = statistics.median(opt), max(opt), sum(opt)
    print(f"  optimization per layer per 1k it:  median {med:6.2f} s  max {top:6.2f} s  sum {total_opt:7.1f} s")
    print(f"  whole layer per 1k it:             median {statistics.median(whole):6.2f} s  max {max(whole):6.2f} s")
    print(f"  apply_adaround wall time:          {total:7.1f} s for {args.iterations} iterations per layer")
    worse = [r.name for r in report.layers if r.adaround_mse >= r.rtn_mse]
    print(f"  layers with error >= round-to-nearest: {len(worse)} {worse[:5]}")
    slowest = sorted(zip(opt, (r.name for r in report.layers)), reverse=True)[:5]
    print("  slowest layers (s / 1k it): " + ", ".join(f"{n} {s:.1f}" for s, n in slowest))

    sim2 = QuantSim(folded, dummy, quant_scheme="tf", default_param_bw=8, default_output_bw=8, per_channel=True)
    sim2.compute_encodings(batches)
    start = time.perf_counter()
    correct_bias(sim2, batches)
    print(f"correct_bias           {time.perf_counter() - start:8.2f} s  ({len(batches)} batches of 16)")


if __name__ == "__main__":
    main()
