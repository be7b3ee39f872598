"""Proxy vs truth (issue 13, point 5): does the scheme-ranking proxy rank pairs like the eval does?

For every quant-scheme pair of the default space (``select_candidates`` and ``candidates``), on the
model as scheme selection sees it in AIMET's order (before BN fold), the pair's sim is calibrated and
scored by: the output SQNR against FP32 on four calibration batches (today's proxy, no eval call),
the KL divergence of the output softmax from FP32's on the same batches (no eval call), the eval
callback on 256 samples (a subset screen), and the full evaluation (the truth). Printed: each proxy's
Spearman and Kendall (tau-b) rank correlation with the full evaluation, whether its top pick is the
eval's, and the regret (best full score minus the full score of the proxy's pick).

    flock /tmp/aq_cpu.lock python benchmarks/bench_proxy.py [--case digits|fmnist] [--bits 4,4] \\
        [--threads 1] [--out benchmarks/results/bench_proxy_digits_w4a4]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import _meta  # noqa: E402

CASES = {
    "digits": ("cases/embedded_digits.py:build", "digits CNN (MobileNet-style), 797 held-out digits"),
    "fmnist": ("cases/fashion_mnist.py:build", "Fashion-MNIST CNN, 10,000 test images"),
}
SQNR_BATCHES = 4


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0
        i = j + 1
    return ranks


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho (Pearson correlation of average ranks)."""
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = math.sqrt(sum((x - ma) ** 2 for x in ra))
    vb = math.sqrt(sum((y - mb) ** 2 for y in rb))
    return cov / (va * vb) if va and vb else float("nan")


def kendall(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b."""
    conc = disc = ta = tb = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ta += 1
            elif db == 0:
                tb += 1
            elif (da > 0) == (db > 0):
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + ta) * (conc + disc + tb))
    return (conc - disc) / denom if denom else float("nan")


def _outputs(model: torch.nn.Module, batches: list[Any]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(b).detach().double() for b in batches]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="digits", choices=sorted(CASES))
    ap.add_argument("--bits", default="4,4", help="param_bw,output_bw")
    ap.add_argument("--per-channel", action="store_true")
    ap.add_argument("--subset", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", default="/tmp/aq_cases")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_proxy"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from _aimet_reference import load_case

    import aq_search
    from aq_search import QuantSim

    param_bw, output_bw = (int(x) for x in args.bits.split(","))
    spec, title = CASES[args.case]
    model, dummy, calib, eval_fn, _ = load_case(str(HERE / spec), {"cache_dir": args.cache_dir}, [str(HERE)])
    model = model.eval()
    space = aq_search.load_search_space("default")
    pairs = list(dict.fromkeys([*space.scheme.select_candidates, *(c for c in space.scheme.candidates.values if c != "select")]))
    probe = calib[:SQNR_BATCHES]
    ref = _outputs(model, probe)
    ref_logp = [torch.log_softmax(r, dim=-1) for r in ref]
    rows = []
    for pair in pairs:
        p, a = pair.split("/")
        sim = QuantSim(
            model, dummy, param_quant_scheme=p, activation_quant_scheme=a,
            default_param_bw=param_bw, default_output_bw=output_bw, per_channel=args.per_channel,
        )
        sim.compute_encodings(lambda m: [m(b) for b in calib])
        out = _outputs(sim.model, probe)
        signal = sum(float(r.pow(2).sum()) for r in ref)
        noise = sum(float((r - o).pow(2).sum()) for r, o in zip(ref, out, strict=True))
        sqnr = 10 * math.log10(signal / noise) if noise > 0 else math.inf
        kl = sum(
            float(torch.nn.functional.kl_div(torch.log_softmax(o, dim=-1), lr, log_target=True, reduction="sum"))
            for o, lr in zip(out, ref_logp, strict=True)
        ) / sum(int(r.shape[0]) for r in ref)
        rows.append({
            "pair": pair, "sqnr_db": sqnr, "kl": kl,
            "subset": float(eval_fn(sim.model, args.subset)), "full": float(eval_fn(sim.model, None)),
        })
        print(rows[-1], flush=True)
    full = [r["full"] for r in rows]
    best_full = max(full)
    proxies = {"output SQNR (dB, higher better)": [r["sqnr_db"] for r in rows],
               "softmax KL vs FP32 (lower better)": [-r["kl"] for r in rows],
               f"eval on {args.subset} samples": [r["subset"] for r in rows]}
    summary = {}
    for name, vals in proxies.items():
        pick = max(range(len(rows)), key=lambda i: vals[i])
        summary[name] = {"spearman": spearman(vals, full), "kendall": kendall(vals, full),
                         "pick": rows[pick]["pair"], "regret": best_full - rows[pick]["full"]}
    lines = [
        f"Command: `flock /tmp/aq_cpu.lock python {' '.join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])}`  ",
        f"Machine: {_meta.machine()}; {args.threads} torch thread(s); date {_meta.now()}; aq-search {_meta.source_state()}.  ",
        f"Case: {title}; W{param_bw}A{output_bw} {'per-channel' if args.per_channel else 'per-tensor'}; model as scheme "
        f"selection sees it in AIMET's order (before BN fold); {len(rows)} scheme pairs; proxies on {SQNR_BATCHES} "
        "calibration batches.",
        "",
        "| pair | output SQNR (dB) | softmax KL vs FP32 | eval on subset | full eval |",
        "|---|---|---|---|---|",
        *[f"| {r['pair']} | {r['sqnr_db']:.2f} | {r['kl']:.4f} | {r['subset']:.4f} | {r['full']:.4f} |" for r in rows],
        "",
        "| proxy | Spearman vs full eval | Kendall tau-b | proxy's pick | regret (full-eval points) |",
        "|---|---|---|---|---|",
        *[f"| {n} | {s['spearman']:.3f} | {s['kendall']:.3f} | {s['pick']} | {s['regret']:.4f} |" for n, s in summary.items()],
    ]
    text = "\n".join(lines) + "\n"
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.with_suffix(".md").write_text(text)
    out_path.with_suffix(".json").write_text(json.dumps({"args": vars(args), "rows": rows, "summary": summary}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
