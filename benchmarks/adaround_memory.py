"""AdaRound's peak RSS on EfficientNet-Lite0's first blocks (synthetic weights, no download, ~30 s).

The layers and activation sizes of EfficientNet-Lite0's stem and first two blocks at 224x224
(stem 3->32 stride 2, depthwise 32, project 32->16, expand 16->96, depthwise 96 stride 2, project
96->24), random weights and inputs, W8A8 per-channel, AdaRound on 64 calibration images in 4
batches of 16 (the benchmark's setting), 10 iterations per layer: where the real model's AdaRound
peak is (``profile_memory.py`` on EfficientNet-Lite0: the expand and depthwise convolutions at
112x112). Prints each layer's RSS before / peak and AdaRound's growth of the process's peak RSS::

    OMP_NUM_THREADS=1 python benchmarks/adaround_memory.py [--out roundings.pt]

``--out`` saves the learned roundings (to compare two versions of the code bit for bit).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time
from typing import Any

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from profile_memory import rss_mib


def _model() -> nn.Module:
    def conv(cin: int, cout: int, k: int, s: int = 1, groups: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups), nn.ReLU6()]

    return nn.Sequential(
        *conv(3, 32, 3, 2),
        *conv(32, 32, 3, groups=32),
        nn.Conv2d(32, 16, 1),
        *conv(16, 96, 1),
        *conv(96, 96, 3, 2, groups=96),
        nn.Conv2d(96, 24, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(24, 10),
    ).eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    peak = [0.0]

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.005)

    threading.Thread(target=sample, daemon=True).start()
    from aq_search import QuantSim
    from aq_search.techniques import AdaRoundParams, _adaround, apply_adaround

    torch.manual_seed(0)
    net = _model()
    batches = [torch.randn(16, 3, 224, 224) for _ in range(4)]
    sim = QuantSim(net, batches[0][:1], quant_scheme="tf", default_param_bw=8, default_output_bw=8, per_channel=True)
    sim.compute_encodings(batches)
    inner = _adaround._adaround_layer

    def layer(s: Any, name: str, *rest: Any) -> Any:
        r0 = rss_mib()
        peak[0] = r0
        out = inner(s, name, *rest)
        print(f"  layer {name}: before {r0:.0f}, peak {peak[0]:.0f} (+{peak[0] - r0:.0f}) MiB", flush=True)
        return out

    _adaround._adaround_layer = layer
    time.sleep(0.1)
    r0 = rss_mib()
    t0 = time.perf_counter()
    apply_adaround(sim, batches, AdaRoundParams(num_batches=4, num_iterations=args.iterations), seed=0)
    m1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"RSS before AdaRound {r0:.0f} MiB; process peak after it {m1:.0f} MiB "
        f"(AdaRound's growth {m1 - r0:.0f} MiB, {time.perf_counter() - t0:.0f} s)"
    )
    if args.out:
        roundings = {n: q.rounding for n, q in sim.param_quantizers.items() if getattr(q, "rounding", None) is not None}
        torch.save(roundings, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
