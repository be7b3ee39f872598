"""QuantSim speed on EfficientNet-Lite0 (CPU), measured side by side in one run.

Prints FP32 eval time, sim eval time and their ratio (target sim/FP32 <= 1.5), the same with the
BN-folded FP32 model as the baseline, and compute_encodings time per scheme.

    OMP_NUM_THREADS=2 python benchmarks/bench_quantsim.py [--batch 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from aq_search import QuantSim
from aq_search.examples import imagenet


def _time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (oneDNN primitive creation)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calib", type=int, default=32, help="calibration images")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = imagenet.load_efficientnet_lite0()
    x = imagenet.augmented_images(args.batch, seed=3)
    calib = imagenet.augmented_images(args.calib, seed=1)

    def feed(m: torch.nn.Module) -> None:
        for i in range(0, len(calib), 16):
            m(calib[i : i + 16])

    print(f"EfficientNet-Lite0, batch {args.batch}, {torch.get_num_threads()} thread(s), median of {args.repeats}")
    with torch.no_grad():
        sim = QuantSim(model, x[:1])
        sim.compute_encodings(feed)
        fp32 = _time(lambda: model(x), args.repeats)
        simt = _time(lambda: sim.model(x), args.repeats)
        fp32_again = _time(lambda: model(x), args.repeats)
        base = min(fp32, fp32_again)
        print(f"FP32 eval            {base * 1000:8.1f} ms")
        print(f"QuantSim W8A8 eval   {simt * 1000:8.1f} ms   sim/FP32 = {simt / base:.2f}  (target <= 1.5)")
        try:
            from aq_search import fold_all_batch_norms

            folded = fold_all_batch_norms(model, x[:1])
            sim_f = QuantSim(folded, x[:1])
            sim_f.compute_encodings(feed)
            ft = _time(lambda: folded(x), args.repeats)
            st = _time(lambda: sim_f.model(x), args.repeats)
            print(f"FP32 BN-folded eval  {ft * 1000:8.1f} ms")
            print(f"QuantSim folded eval {st * 1000:8.1f} ms   sim/FP32-folded = {st / ft:.2f}")
        except ImportError:
            pass
    print(f"compute_encodings on {args.calib} images (activations + weights), per scheme:")
    for scheme in ("tf", "tf_enhanced", "percentile", "mse"):
        s = QuantSim(model, x[:1], quant_scheme=scheme)
        start = time.perf_counter()
        with torch.no_grad():
            s.compute_encodings(feed)
        total = time.perf_counter() - start
        start = time.perf_counter()
        s.compute_param_encodings()
        params = time.perf_counter() - start
        print(f"  {scheme:12} {total:7.2f} s   (of which weight encodings {params:.2f} s)")


if __name__ == "__main__":
    main()
