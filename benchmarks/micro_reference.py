"""Micro-benchmarks side by side with the reference (AIMET 2.30), same model and data, one run.

On EfficientNet-Lite0 (ImageNet weights, BN-folded, per-channel weights), each tool in its own
process with the same thread count (the reference first, through ``benchmarks/_aimet_micro.py`` in
``.venv-aimet``; then aq-search in this process):

1. sim eval overhead: FP32 forward vs the W8A8 sim's forward (tf_enhanced), batch of
   ``--batch`` images, median of ``--repeats``; sim/FP32 per tool and ours/AIMET.
2. calibration time per scheme: sim creation and ``compute_encodings`` over the calibration images.
3. AdaRound on the same layers, data and iterations (W4, min-max weight encodings, per channel):
   time per layer (whole, and the optimization loop alone) and reconstruction error. Both tools'
   roundings are scored by one function: mean squared error of the layer's output (after its
   ReLU6) against the FP32 output, on the layer's FP32 inputs from the calibration batches, for
   round-to-nearest and for AdaRound, each on its own tool's grid.

    flock /tmp/aq_cpu.lock python benchmarks/micro_reference.py [--threads 1] [--iterations 200] \
        [--layers default|all|name,name] [--out benchmarks/results/micro_reference]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import _meta  # noqa: E402  (benchmarks/ is not a package)

DEFAULT_LAYERS = (
    "_conv_stem",
    "_blocks.0._depthwise_conv",
    "_blocks.1._expand_conv",
    "_blocks.1._depthwise_conv",
    "_blocks.5._depthwise_conv",
    "_blocks.10._project_conv",
    "_conv_head",
    "_fc",
)


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _ours(case: dict[str, Any], layers: list[str], args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    from aq_search import QuantSim, fold_all_batch_norms
    from aq_search.techniques import AdaRoundParams, _adaround, apply_adaround
    from aq_search.techniques._running import float_mode

    model, dummy, calib = case["model"], case["dummy_input"], case["calib_batches"]
    x = torch.cat(calib)[: args.batch]
    out: dict[str, Any] = {}

    def feed(m: nn.Module) -> None:
        with torch.no_grad():
            for b in calib:
                m(b)

    folded = fold_all_batch_norms(model, dummy)
    sim = QuantSim(folded, dummy, quant_scheme="tf_enhanced", default_param_bw=8, default_output_bw=8, per_channel=True)
    sim.compute_encodings(feed)
    sim.model.eval()
    with torch.no_grad():
        fp32_a = _median_time(lambda: model(x), args.repeats)
        fp32_folded = _median_time(lambda: folded(x), args.repeats)
        sim_t = _median_time(lambda: sim.model(x), args.repeats)
        fp32_b = _median_time(lambda: model(x), args.repeats)
    out["eval"] = {"fp32_s": min(fp32_a, fp32_b), "fp32_folded_s": fp32_folded, "sim_w8a8_s": sim_t, "batch": len(x)}

    out["calibration"] = {}
    for scheme in ("tf", "tf_enhanced", "percentile", "mse"):
        start = time.perf_counter()
        s = QuantSim(folded, dummy, quant_scheme=scheme, default_param_bw=8, default_output_bw=8, per_channel=True)
        built = time.perf_counter() - start
        start = time.perf_counter()
        s.compute_encodings(feed)
        out["calibration"][scheme] = {"create_s": built, "compute_encodings_s": time.perf_counter() - start}
        del s

    sim = QuantSim(folded, dummy, quant_scheme="tf", default_param_bw=args.bits, default_output_bw=8, per_channel=True)
    sim.compute_encodings(feed)
    for name in sim.quantized_layers:
        if name not in layers:
            sim.set_enabled(name, param=False)
    # FP32 inputs of the chosen layers on the AdaRound batches (the same ones both tools use)
    captured: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    hooks = [
        sim.model.get_submodule(n).register_forward_pre_hook(lambda _m, a, n=n: captured[n].append(a[0].detach())) for n in layers
    ]
    with torch.no_grad(), float_mode(sim):
        for b in calib[: args.num_batches]:
            sim.model(b)
    for h in hooks:
        h.remove()
    inputs = {n: torch.cat(v) for n, v in captured.items()}
    grids = {n: _adaround._grid(sim.param_quantizer(n), sim.float_weight(n).shape) for n in layers}
    clamps = {n: _adaround._fused_clamp(sim, n) for n in layers}
    w_fp = {n: sim.float_weight(n).detach().clone() for n in layers}

    optimize_s: list[float] = []
    original = _adaround._optimize

    def timed(*a: Any, **k: Any) -> torch.Tensor:
        start = time.perf_counter()
        r = original(*a, **k)
        optimize_s.append(time.perf_counter() - start)
        return r

    _adaround._optimize = timed
    try:
        start = time.perf_counter()
        apply_adaround(sim, calib, AdaRoundParams(num_batches=args.num_batches, num_iterations=args.iterations))
        total = time.perf_counter() - start
    finally:
        _adaround._optimize = original
    report = sim.model.meta["aq_search"]["adaround"]
    per_layer = {}
    for r, opt in zip(report.layers, optimize_s, strict=True):
        per_layer[r.name] = {"whole_s": r.seconds, "optimize_s": opt, "kept_nearest": r.kept_nearest}
    out["adaround"] = {"total_s": total, "layers": per_layer, "batch_size": 1024}
    scoring = {"inputs": inputs, "clamps": clamps, "grids": grids, "w_fp": w_fp, "sim": sim, "report": report}
    return out, scoring


def _recon(scoring: dict[str, Any], aimet_tensors: dict[str, dict[str, torch.Tensor]], layers: list[str]) -> dict[str, Any]:
    from aq_search.techniques import _adaround

    sim = scoring["sim"]
    out = {}
    for name in layers:
        module = sim.layer(name)
        x, clamp, w = scoring["inputs"][name], scoring["clamps"][name], scoring["w_fp"][name]
        with torch.no_grad():
            target = torch.cat(
                [_adaround._activate(_adaround._functional(module, x[i : i + 64], w), clamp) for i in range(0, len(x), 64)]
            )
        grid = scoring["grids"][name]
        q = sim.param_quantizer(name)
        w_ours = grid.rounded(w, q.rounding.to(w.dtype)) if q.rounding is not None else grid.rtn(w)
        row = {
            "ours_rtn": _adaround._mse(module, x, grid.rtn(w), target, clamp),
            "ours_ada": _adaround._mse(module, x, w_ours, target, clamp),
        }
        a = aimet_tensors.get(name)
        if a is not None:
            row["aimet_rtn"] = _adaround._mse(module, x, a["w_rtn"].reshape(w.shape), target, clamp)
            row["aimet_ada"] = _adaround._mse(module, x, a["w_ada"].reshape(w.shape), target, clamp)
            row["weights_rel_diff"] = float((a["w_fp"].reshape(w.shape) - w).abs().max() / w.abs().max())
        out[name] = row
    return out


def _fmt(v: float | None, f: str = "{:.3f}") -> str:
    return "-" if v is None else f.format(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16, help="images per timed forward pass")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=200, help="AdaRound iterations per layer (both tools)")
    ap.add_argument("--num-batches", type=int, default=4, help="AdaRound batches of 16 images (both tools)")
    ap.add_argument("--bits", type=int, default=4, help="AdaRound weight bit-width")
    ap.add_argument("--layers", default="default", help="'default', 'all', or a comma list of module names")
    ap.add_argument("--aimet-venv", default=str(REPO / ".venv-aimet"))
    ap.add_argument("--cache-dir", default="/tmp/aq_cases")
    ap.add_argument("--workdir", default="/tmp/aq_micro")
    ap.add_argument("--out", default=str(HERE / "results" / "micro_reference"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[k] = str(args.threads)
    from cases.efficientnet_lite0 import build

    case = build(args.cache_dir)
    if args.layers == "default":
        layers = list(DEFAULT_LAYERS)
    elif args.layers == "all":
        layers = [n for n, m in case["model"].named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    else:
        layers = [s.strip() for s in args.layers.split(",") if s.strip()]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    job = {
        "case": str(HERE / "cases" / "efficientnet_lite0.py:build"),
        "case_kwargs": {"cache_dir": args.cache_dir},
        "num_threads": args.threads,
        "timing_batch": args.batch,
        "repeats": args.repeats,
        "schemes": ["tf", "tf_enhanced", "percentile", "mse"],
        "adaround": {"bits": args.bits, "num_iterations": args.iterations, "num_batches": args.num_batches, "layers": layers},
        "output": str(work / "aimet_micro.json"),
        "tensors": str(work / "aimet_micro_tensors.pt"),
    }
    (work / "aimet_micro_job.json").write_text(json.dumps(job, indent=1))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}
    print(f"[micro] reference (AIMET) in {args.aimet_venv} ...", flush=True)
    start = time.perf_counter()
    with open(work / "aimet_micro.log", "w") as log:
        subprocess.run(
            [str(Path(args.aimet_venv) / "bin" / "python"), str(HERE / "_aimet_micro.py"), str(work / "aimet_micro_job.json")],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
        )
    print(f"[micro] reference done in {time.perf_counter() - start:.0f} s; aq-search ...", flush=True)
    ref = json.loads((work / "aimet_micro.json").read_text())
    tensors = torch.load(work / "aimet_micro_tensors.pt", weights_only=True)
    ours, scoring = _ours(case, layers, args)
    recon = _recon(scoring, tensors, layers)

    e_r, e_o = ref["eval"], ours["eval"]
    lines = [
        f"Command: `flock /tmp/aq_cpu.lock python {' '.join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])}`  ",
        f"Machine: {_meta.machine()}; {args.threads} torch thread(s) in each process (OMP/MKL_NUM_THREADS too); date "
        f"{_meta.now()}; aq-search {_meta.source_state()}. EfficientNet-Lite0, BN-folded, per-channel weights; "
        "AIMET 2.30 (its model preparer + fold) in .venv-aimet, aq-search in the main venv, run one after the other.",
        "",
        f"**Sim eval overhead** (W8A8 tf_enhanced, batch {e_o['batch']}, median of {args.repeats}):",
        "",
        "| | FP32 s | FP32 BN-folded s | sim s | sim / FP32 | sim / FP32 folded |",
        "|---|---|---|---|---|---|",
    ]
    for who, e in (("AIMET QuantizationSimModel", e_r), ("aq-search QuantSim", e_o)):
        lines.append(
            f"| {who} | {e['fp32_s']:.3f} | {e['fp32_folded_s']:.3f} | {e['sim_w8a8_s']:.3f} "
            f"| {e['sim_w8a8_s'] / e['fp32_s']:.2f} | {e['sim_w8a8_s'] / e['fp32_folded_s']:.2f} |"
        )
    lines += ["", f"ours / AIMET sim eval time: {e_o['sim_w8a8_s'] / e_r['sim_w8a8_s']:.2f}x", ""]
    n_cal = sum(len(b) for b in case["calib_batches"])
    lines += [
        f"**Calibration per scheme** (W8A8 per-channel, {n_cal} images; sim creation + compute_encodings, seconds):",
        "",
        "| scheme | AIMET create | AIMET compute_encodings | ours create | ours compute_encodings | ours / AIMET (total) |",
        "|---|---|---|---|---|---|",
    ]
    for scheme in ("tf", "tf_enhanced", "percentile", "mse"):
        r, o = ref["calibration"].get(scheme), ours["calibration"][scheme]
        ratio = None if r is None else (o["create_s"] + o["compute_encodings_s"]) / (r["create_s"] + r["compute_encodings_s"])
        lines.append(
            f"| {scheme}{' (99.99)' if scheme == 'percentile' else ''} | {_fmt(r and r['create_s'], '{:.2f}')} "
            f"| {_fmt(r and r['compute_encodings_s'], '{:.2f}')} | {o['create_s']:.2f} | {o['compute_encodings_s']:.2f} "
            f"| {_fmt(ratio, '{:.2f}x')} |"
        )
    ra, oa = ref["adaround"], ours["adaround"]
    lines += [
        "",
        f"**AdaRound** W{args.bits} per-channel min-max, {args.iterations} iterations, {args.num_batches} batches of 16 images, "
        f"{len(layers)} layers (samples per iteration: AIMET 32 whole images, ours 1024 output positions). Time per layer in s "
        "(whole = input caching + optimization + bookkeeping; opt = the optimization loop) and reconstruction MSE "
        "(RTN = round-to-nearest, Ada = AdaRound; each on its own tool's grid; lower is better):",
        "",
        "| layer | AIMET whole | AIMET opt | ours whole | ours opt | ours/AIMET whole | AIMET RTN | AIMET Ada | ours RTN "
        "| ours Ada | Ada/RTN AIMET | Ada/RTN ours |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in layers:
        r, o, e = ra["layers"].get(name, {}), oa["layers"].get(name, {}), recon[name]
        lines.append(
            f"| {name} | {_fmt(r.get('whole_s'), '{:.2f}')} | {_fmt(r.get('optimize_s'), '{:.2f}')} "
            f"| {_fmt(o.get('whole_s'), '{:.2f}')} | {_fmt(o.get('optimize_s'), '{:.2f}')} "
            f"| {_fmt(o.get('whole_s') / r['whole_s'] if r.get('whole_s') and o.get('whole_s') else None, '{:.3f}x')} "
            f"| {_fmt(e.get('aimet_rtn'), '{:.3g}')} | {_fmt(e.get('aimet_ada'), '{:.3g}')} | {e['ours_rtn']:.3g} "
            f"| {e['ours_ada']:.3g}{' (kept RTN)' if o.get('kept_nearest') else ''} "
            f"| {_fmt(e['aimet_ada'] / e['aimet_rtn'] if e.get('aimet_rtn') else None, '{:.2f}')} "
            f"| {_fmt(e['ours_ada'] / e['ours_rtn'] if e['ours_rtn'] else None, '{:.2f}')} |"
        )
    lines += [
        "",
        f"apply_adaround total: AIMET {ra['total_s']:.1f} s, ours {oa['total_s']:.1f} s "
        f"(ours / AIMET {oa['total_s'] / ra['total_s']:.3f}x). Max relative difference between the two tools' "
        f"BN-folded FP32 weights: {max(e.get('weights_rel_diff', 0.0) for e in recon.values()):.2g}.",
    ]
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"reference": ref, "ours": ours, "recon": recon}, indent=1, default=str))
    print(text)


if __name__ == "__main__":
    main()
