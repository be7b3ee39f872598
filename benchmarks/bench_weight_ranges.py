"""Weight ranges only: output SQNR of weights-only quantized models, per weight range scheme (issue 13 point 9).

For each case (digits CNN, Fashion-MNIST CNN, EfficientNet-Lite0), the BN-folded FP32 model gets only
its weights quantized (activations float) with each range scheme; the cell is the output SQNR
against the FP32 folded model on the calibration batches, the eval, and the seconds the weight
encodings took. ``tf_enhanced`` is run with each ``--bias-penalties`` value (the weight of the
signed-error term of its weight range search, see ``aq_search/quantsim/_weight_search.py``) and
with the shipped default.

    flock /tmp/aq_cpu.lock python benchmarks/bench_weight_ranges.py --threads 2 \
        [--cases digits:4,fmnist:4,effnet:8] [--bias-penalties 0,0.5,1,2,4] [--out benchmarks/results/bench_weight_ranges]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import _meta  # noqa: E402  (benchmarks/ is not a package)
from _aimet_reference import load_case  # noqa: E402

CASES = {"digits": "digits.py", "fmnist": "fashion_mnist.py", "effnet": "efficientnet_lite0.py"}


def _schemes(bias_penalties: list[float]) -> list[tuple[str, Any]]:
    from aq_search.quantsim import SqnrEstimator

    out: list[tuple[str, Any]] = [("tf", "tf"), ("tf_enhanced (default)", "tf_enhanced"), ("mse", "mse")]
    if "bias_penalty" in inspect.signature(SqnrEstimator).parameters:
        out += [(f"tf_enhanced bias_penalty={b:g}", SqnrEstimator(bias_penalty=b)) for b in bias_penalties]
    return out


def run_case(name: str, bits: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    from aq_search import QuantSim, fold_all_batch_norms
    from aq_search._numerics import sqnr_db

    spec = f"{HERE / 'cases' / CASES[name]}:build"
    model, dummy_input, calib, eval_fn, _ = load_case(spec, {"cache_dir": args.cache_dir}, [str(HERE)])
    folded = fold_all_batch_norms(model, dummy_input)
    folded.eval()
    with torch.no_grad():
        ref = torch.cat([folded(b) for b in calib])
    rows = []
    for per_channel in args.granularity:
        if name == "effnet" and not per_channel:
            continue  # depthwise convs make per-tensor EfficientNet-Lite0 meaningless at these widths
        for label, scheme in _schemes(args.bias_penalties):
            start = time.perf_counter()
            sim = QuantSim(
                folded,
                dummy_input,
                quant_scheme=scheme,
                default_param_bw=bits,
                default_output_bw=None,
                per_channel=per_channel,
            )
            sim.compute_encodings(lambda m: None)
            seconds = time.perf_counter() - start
            with torch.no_grad():
                out = torch.cat([sim.model(b) for b in calib])
            row = {
                "case": name,
                "bits": bits,
                "per_channel": per_channel,
                "scheme": label,
                "sqnr_db": sqnr_db(float(ref.double().square().sum()), float((out - ref).double().square().sum())),
                "accuracy": float(eval_fn(sim.model)),
                "encode_s": seconds,
            }
            rows.append(row)
            print(
                f"[weights] {name} W{bits} {'per-channel' if per_channel else 'per-tensor'} {label}: "
                f"SQNR {row['sqnr_db']:.2f} dB, acc {row['accuracy']:.4f}, {seconds:.2f} s",
                flush=True,
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", default="digits:4,fmnist:4,effnet:8", help="comma list of case:weight_bits")
    ap.add_argument("--granularity", default="channel,tensor", help="channel and/or tensor")
    ap.add_argument("--bias-penalties", default="", help="extra tf_enhanced runs, e.g. 0,0.5,1,2,4")
    ap.add_argument("--cache-dir", default="/tmp/aq_cases")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    args.bias_penalties = [float(b) for b in args.bias_penalties.split(",") if b.strip()]
    args.granularity = [g.strip() == "channel" for g in args.granularity.split(",") if g.strip()]
    torch.set_num_threads(args.threads)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[k] = str(args.threads)
    rows = []
    for item in args.cases.split(","):
        name, _, bits = item.strip().partition(":")
        rows += run_case(name, int(bits or 8), args)
    lines = [
        f"Command: `flock /tmp/aq_cpu.lock python {' '.join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])}`  ",
        f"Machine: {_meta.machine()}; {args.threads} torch thread(s); date {_meta.now()}; aq-search {_meta.source_state()}. "
        "Weights-only quantization of the BN-folded model; SQNR: output vs FP32 folded on the calibration batches.",
        "",
        "| case | weights | granularity | scheme | output SQNR dB | accuracy | encodings s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | W{r['bits']} | {'per-channel' if r['per_channel'] else 'per-tensor'} | {r['scheme']} "
            f"| {r['sqnr_db']:.2f} | {r['accuracy']:.4f} | {r['encode_s']:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(text)
        out.with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
