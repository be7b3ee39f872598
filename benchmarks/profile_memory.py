"""Where aq-search's peak RSS comes from: per stage, per calibration / evaluation, per AdaRound layer.

Runs ``AutoQuant.optimize`` on a benchmark case (default: EfficientNet-Lite0 W8A8 per-channel, the
``default`` space, AdaRound 100 iterations x 4 batches, as ``compare_reference.py --cases effnet-w8a8``)
for ``--n-trials`` trials (default 1: trial 0) while a thread samples the process's RSS every 10 ms,
and prints, for each wrapped call, the RSS before it, the peak during it and the RSS after it::

    flock /tmp/aq_cpu.lock python benchmarks/profile_memory.py [--case cases/efficientnet_lite0.py:build]
        [--param-bw 8] [--output-bw 8] [--iterations 100] [--n-trials 1] [--threads 2] [--json out.json]

AdaRound layers are printed when their peak is at least ``--min-mib`` above the RSS before them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    """The process's resident set size now, MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 2**20


class Profiler:
    """Samples RSS in a thread; every open frame (a wrapped call in progress) keeps the peak it saw."""

    def __init__(self, min_mib: float) -> None:
        self.frames: list[list[Any]] = []
        self.events: list[dict[str, Any]] = []
        self.min_mib = min_mib
        self.lock = threading.Lock()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            r = rss_mib()
            with self.lock:
                for frame in self.frames:
                    frame[2] = max(frame[2], r)
            time.sleep(0.01)

    def wrap(self, owner: Any, attr: str, label: str, detail: Callable[..., str] | None = None) -> None:
        """Replace ``owner.attr`` by a wrapper that records its RSS before / peak / after."""
        fn = getattr(owner, attr)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            r0 = rss_mib()
            frame = [label, r0, r0]
            with self.lock:
                self.frames.append(frame)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                r1 = rss_mib()
                with self.lock:
                    self.frames.remove(frame)
                    depth = len(self.frames)
                peak = max(frame[2], r1)
                what = detail(*args) if detail is not None else ""
                event = {"call": label, "detail": what, "depth": depth, "before": round(r0), "peak": round(peak)}
                event.update({"after": round(r1), "seconds": round(time.perf_counter() - t0, 1)})
                self.events.append(event)
                if label != "adaround layer" or peak - r0 >= self.min_mib:
                    print(
                        f"{'  ' * depth}{label} {what}: before {r0:.0f}, peak {peak:.0f}, after {r1:.0f} MiB "
                        f"({event['seconds']} s)",
                        flush=True,
                    )

        setattr(owner, attr, wrapper)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", default="cases/efficientnet_lite0.py:build")
    ap.add_argument("--cache-dir", default="/tmp/aq_cases")
    ap.add_argument("--param-bw", type=int, default=8)
    ap.add_argument("--output-bw", type=int, default=8)
    ap.add_argument("--allowed-drop", type=float, default=0.01)
    ap.add_argument("--iterations", type=int, default=100, help="AdaRound iterations (4 batches)")
    ap.add_argument("--n-trials", type=int, default=1, help="0: no limit (with --timeout)")
    ap.add_argument("--timeout", type=float, default=None, help="optimize's timeout in seconds")
    ap.add_argument("--space", default="default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-mib", type=float, default=100.0)
    ap.add_argument("--results-dir", default="/tmp/aq_profile_memory")
    ap.add_argument("--json", default=None, help="write every recorded call here")
    args = ap.parse_args(argv)
    prof = Profiler(args.min_mib)

    import optuna
    import torch
    from _aimet_reference import load_case

    from aq_search import AdaRoundParams, AutoQuant, QuantSim
    from aq_search.search import _context, _run, _scheme
    from aq_search.techniques import _adaround

    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    prof.wrap(_run, "_run_stage", "stage", lambda ctx, state, stage, keep: stage.describe())
    prof.wrap(_run, "_score", "score")
    prof.wrap(_context.RunContext, "calibrated_sim", "calibrated_sim")
    prof.wrap(QuantSim, "compute_encodings", "compute_encodings")
    prof.wrap(_scheme, "_outputs", "sqnr outputs")
    prof.wrap(_adaround, "_adaround_layer", "adaround layer", lambda sim, name, *rest: name)
    print(f"after imports: {rss_mib():.0f} MiB", flush=True)
    model, dummy, calib, eval_fn, built = load_case(args.case, {"cache_dir": args.cache_dir}, [HERE])
    model.eval()
    meta = dict(built.get("meta") or {}) if isinstance(built, dict) else {}
    eval_size = meta.get("eval_images", meta.get("n_test"))
    aq = AutoQuant(
        model,
        dummy,
        calib,
        lambda m, n=None: float(eval_fn(m, n)),
        param_bw=args.param_bw,
        output_bw=args.output_bw,
        results_dir=args.results_dir,
        search_space=args.space,
        seed=0,
        quant_scheme="tf_enhanced",
        per_channel=True,
        adaround_params=AdaRoundParams(num_batches=4, num_iterations=args.iterations),
        eval_size=None if eval_size is None else int(eval_size),
    )
    prof.wrap(aq, "optimize", "optimize")
    res = aq.optimize(allowed_accuracy_drop=args.allowed_drop, n_trials=args.n_trials or None, timeout=args.timeout)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"ru_maxrss {maxrss:.0f} MiB; result {res.accuracy:.4f} ({res.pipeline})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"events": prof.events, "ru_maxrss_mib": maxrss, "accuracy": res.accuracy}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
