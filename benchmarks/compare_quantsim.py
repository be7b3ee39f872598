"""Simulator side by side: aq-search's QuantSim vs AIMET 2.30's QuantizationSimModel (issue 13 point 9).

On EfficientNet-Lite0 (ImageNet weights, BN-folded, per-channel weights; the calibration and eval
data of ``compare_reference.py``'s effnet cases), per quant scheme and per mode:

* ``W8A8``: weights and activations quantized;
* ``W8`` weights only (activations float);
* ``A8`` activations only (weights float).

Each cell: the eval (top-1 agreement with FP32 on 128 images) and the output SQNR against the FP32
folded model on the 64 calibration images (finer than 1/128 accuracy steps). AIMET runs first in
its own process (``benchmarks/_aimet_quantsim.py`` in the AIMET venv), then aq-search here.

Then the weight encodings of each scheme, layer by layer, ours vs AIMET's (from the weights-only
sims): relative weight MSE of each tool's quantize-dequantized weights, the median clipping ratio
(range / max |w| per channel), and a cross-check: AIMET's quantize-dequantized weights loaded into
the FP32 model (our side), scored with the same eval, and our W8A8 sim with AIMET's weights in place
of our weight quantizers.

    flock /tmp/aq_cpu.lock python benchmarks/compare_quantsim.py --aimet-venv /work/venv-aimet \
        [--threads 2] [--reuse-reference] [--out benchmarks/results/compare_quantsim]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import _meta  # noqa: E402  (benchmarks/ is not a package)

SCHEMES = ("tf", "tf_enhanced", "percentile", "mse")
MODES = (("wa", "W{w}A{a}"), ("w", "W{w} weights only"), ("a", "A{a} activations only"))


def _sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    noise = float((out - ref).double().pow(2).sum())
    signal = float(ref.double().pow(2).sum())
    return math.inf if noise == 0 else 10.0 * math.log10(signal / noise)


def _ours_name(aimet_name: str, ours: set[str]) -> str | None:
    """AIMET's model preparer turns a functional conv into a child ``<name>.module_conv2d``."""
    if aimet_name in ours:
        return aimet_name
    parent = aimet_name.rpartition(".")[0]
    return parent if parent in ours else None


def _weight_stats(w: torch.Tensor, wq: torch.Tensor) -> dict[str, float]:
    c = w.reshape(w.shape[0], -1).double()
    cq = wq.reshape(w.shape[0], -1).double()
    return {"rel_mse": float((cq - c).pow(2).sum() / c.pow(2).sum())}


def _clip_ratio(lo: torch.Tensor, hi: torch.Tensor, w: torch.Tensor) -> float:
    absmax = w.reshape(w.shape[0], -1).abs().amax(1).double().clamp_min(1e-12)
    rng = torch.maximum(hi.double().abs(), lo.double().abs())
    return float(statistics.median((rng / absmax).tolist()))


def _ours(case: dict[str, Any], args: argparse.Namespace, ref_tensors: dict[str, Any]) -> dict[str, Any]:
    from aq_search import QuantSim, fold_all_batch_norms
    from aq_search.quantsim._fake_quant import range_from_encoding

    model, dummy, calib, eval_fn = case["model"], case["dummy_input"], case["calib_batches"], case["eval_fn"]
    folded = fold_all_batch_norms(model, dummy)
    folded.eval()
    with torch.no_grad():
        ref_out = torch.cat([folded(b) for b in calib])
    out: dict[str, Any] = {"fp32": {"accuracy": float(eval_fn(folded, None))}, "runs": {}, "layers": {}, "cross": {}}

    def feed(m: nn.Module) -> None:
        with torch.no_grad():
            for b in calib:
                m(b)

    def score(m: nn.Module) -> tuple[float, float]:
        m.eval()
        with torch.no_grad():
            sim_out = torch.cat([m(b) for b in calib])
        return float(eval_fn(m, None)), _sqnr_db(ref_out, sim_out)

    ours_layers = {n for n, m in folded.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    for scheme in args.schemes:
        for mode in args.modes:
            start = time.perf_counter()
            sim = QuantSim(
                folded,
                dummy,
                quant_scheme=scheme,
                percentile=args.percentile if scheme == "percentile" else None,
                default_param_bw=args.param_bw if "w" in mode else None,
                default_output_bw=args.output_bw if "a" in mode else None,
                per_channel=True,
            )
            sim.compute_encodings(feed)
            calibrate_s = time.perf_counter() - start
            acc, sqnr = score(sim.model)
            out["runs"][f"{scheme}/{mode}"] = {"accuracy": acc, "calib_sqnr_db": sqnr, "calibrate_s": calibrate_s}
            print(f"[quantsim] ours {scheme}/{mode}: acc {acc:.4f}, SQNR {sqnr:.2f} dB", flush=True)
            if mode != "w":
                continue
            ref_layers = ref_tensors.get(scheme, {})
            rows: dict[str, Any] = {}
            for aname, r in ref_layers.items():
                name = _ours_name(aname, ours_layers)
                if name is None or f"{name}.weight" not in sim.param_quantizers:
                    continue
                q = sim.param_quantizer(name)
                w = sim.float_weight(name).detach()
                with torch.no_grad():
                    wq = sim.layer(name).weight.detach()
                lo, hi = range_from_encoding(q.scale, q.zero_point, q.bitwidth, q.symmetric)
                rw = r["w_fp"].reshape(w.shape)
                rows[name] = {
                    "ours_rel_mse": _weight_stats(w, wq)["rel_mse"],
                    "aimet_rel_mse": _weight_stats(rw, r["w_qdq"].reshape(w.shape))["rel_mse"],
                    "ours_clip": _clip_ratio(lo, hi, w),
                    "aimet_clip": _clip_ratio(r["min"], r["max"], rw),
                    "numel_per_channel": w[0].numel(),
                    "channels": w.shape[0],
                    "fp_rel_diff": float((rw - w).abs().max() / w.abs().max().clamp_min(1e-12)),
                }
            out["layers"][scheme] = rows
            # cross-check: AIMET's weights in the FP32 model, and in our W8A8 sim (our activations)
            if ref_layers:
                swapped = copy.deepcopy(folded)
                for aname, r in ref_layers.items():
                    name = _ours_name(aname, ours_layers)
                    if name is not None:
                        mod = swapped.get_submodule(name)
                        with torch.no_grad():
                            mod.weight.copy_(r["w_qdq"].reshape(mod.weight.shape))
                acc_w, sqnr_w = score(swapped)
                hybrid = QuantSim(
                    swapped,
                    dummy,
                    quant_scheme=scheme,
                    default_param_bw=None,
                    default_output_bw=args.output_bw,
                    per_channel=True,
                    percentile=args.percentile if scheme == "percentile" else None,
                )
                hybrid.compute_encodings(feed)
                acc_h, sqnr_h = score(hybrid.model)
                out["cross"][scheme] = {
                    "aimet_weights_float_acts": {"accuracy": acc_w, "calib_sqnr_db": sqnr_w},
                    "aimet_weights_our_acts": {"accuracy": acc_h, "calib_sqnr_db": sqnr_h},
                }
                del swapped, hybrid
            del sim
    return out


def _fmt(v: float | None, f: str = "{:.4f}") -> str:
    return "-" if v is None else f.format(v)


def _report(args: argparse.Namespace, ref: dict[str, Any], ours: dict[str, Any]) -> str:
    w, a = args.param_bw, args.output_bw
    lines = [
        f"Command: `flock /tmp/aq_cpu.lock python {' '.join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])}`  ",
        f"Machine: {_meta.machine()}; {args.threads} torch thread(s) in each process; date {_meta.now()}; "
        f"aq-search {_meta.source_state()}; aimet-torch {ref.get('versions', {}).get('aimet_torch', '?')} in its own "
        "process, first. EfficientNet-Lite0, BN-folded (each tool its own fold), per-channel weights; eval: top-1 "
        "agreement with FP32 on 128 images; SQNR: output vs the FP32 folded model on the 64 calibration images."
        + (
            f" AIMET's side was not rerun: its results were reused from {args.workdir}/aimet_quantsim.json."
            if args.reuse_reference
            else ""
        ),
        "",
        f"FP32 (folded): AIMET {ref['fp32']['accuracy']:.4f}, ours {ours['fp32']['accuracy']:.4f}.",
        "",
        "| scheme | mode | AIMET acc. | ours acc. | ours - AIMET | AIMET SQNR dB | ours SQNR dB | AIMET calib. s "
        "| ours calib. s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for scheme in args.schemes:
        for mode, label in MODES:
            if mode not in args.modes:
                continue
            r = ref["runs"].get(f"{scheme}/{mode}")
            o = ours["runs"][f"{scheme}/{mode}"]
            label_s = label.format(w=w, a=a)
            diff = None if r is None else o["accuracy"] - r["accuracy"]
            lines.append(
                f"| {scheme}{' (' + str(args.percentile) + ')' if scheme == 'percentile' else ''} | {label_s} "
                f"| {_fmt(r and r['accuracy'])} | {o['accuracy']:.4f} | {_fmt(diff, '{:+.4f}')} "
                f"| {_fmt(r and r['calib_sqnr_db'], '{:.2f}')} | {o['calib_sqnr_db']:.2f} "
                f"| {_fmt(r and r['calibrate_s'], '{:.1f}')} | {o['calibrate_s']:.1f} |"
            )
    if ours["layers"]:
        lines += [
            "",
            f"**Weight encodings, W{w} per channel, layer by layer** (from the weights-only sims). Relative MSE = "
            "||Wq - W||^2 / ||W||^2 of each tool's quantize-dequantized weights (lower is better); clip = median over "
            "channels of range / max|w|. Cross-check: AIMET's quantize-dequantized weights loaded into our FP32 model "
            "(activations float), and into our sim with our activation quantizers (same scheme).",
            "",
            "| scheme | layers compared | ours lower MSE / AIMET lower | sum rel. MSE ours / AIMET | median clip ours / AIMET "
            "| AIMET weights, float acts: acc. (SQNR) | AIMET weights + our A-quant: acc. (SQNR) |",
            "|---|---|---|---|---|---|---|",
        ]
        for scheme, rows in ours["layers"].items():
            if not rows:
                continue
            n_ours = sum(1 for v in rows.values() if v["ours_rel_mse"] < v["aimet_rel_mse"] * (1 - 1e-6))
            n_ref = sum(1 for v in rows.values() if v["aimet_rel_mse"] < v["ours_rel_mse"] * (1 - 1e-6))
            so = sum(v["ours_rel_mse"] for v in rows.values())
            sr = sum(v["aimet_rel_mse"] for v in rows.values())
            co = statistics.median(v["ours_clip"] for v in rows.values())
            cr = statistics.median(v["aimet_clip"] for v in rows.values())
            x = ours["cross"].get(scheme, {})
            xw, xh = x.get("aimet_weights_float_acts"), x.get("aimet_weights_our_acts")
            lines.append(
                f"| {scheme} | {len(rows)} | {n_ours} / {n_ref} | {so:.3g} / {sr:.3g} | {co:.3f} / {cr:.3f} "
                f"| {_fmt(xw and xw['accuracy'])} ({_fmt(xw and xw['calib_sqnr_db'], '{:.2f}')}) "
                f"| {_fmt(xh and xh['accuracy'])} ({_fmt(xh and xh['calib_sqnr_db'], '{:.2f}')}) |"
            )
        worst = sorted(
            ((s, n, v) for s, rows in ours["layers"].items() for n, v in rows.items() if s == "tf_enhanced"),
            key=lambda t: t[2]["ours_rel_mse"] / max(t[2]["aimet_rel_mse"], 1e-30),
            reverse=True,
        )[: args.top_layers]
        if worst:
            lines += [
                "",
                f"tf_enhanced, the {len(worst)} layers where our weight MSE is highest relative to AIMET's:",
                "",
                "| layer | channels x values | ours rel. MSE | AIMET rel. MSE | ratio | clip ours | clip AIMET |",
                "|---|---|---|---|---|---|---|",
            ]
            for _s, n, v in worst:
                lines.append(
                    f"| {n} | {v['channels']} x {v['numel_per_channel']} | {v['ours_rel_mse']:.3g} | {v['aimet_rel_mse']:.3g} "
                    f"| {v['ours_rel_mse'] / max(v['aimet_rel_mse'], 1e-30):.2f} | {v['ours_clip']:.3f} | {v['aimet_clip']:.3f} |"
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--param-bw", type=int, default=8)
    ap.add_argument("--output-bw", type=int, default=8)
    ap.add_argument("--percentile", type=float, default=99.99)
    ap.add_argument("--schemes", default=",".join(SCHEMES), help="comma list of " + ", ".join(SCHEMES))
    ap.add_argument("--modes", default="wa,w,a", help="wa (both), w (weights only), a (activations only)")
    ap.add_argument("--top-layers", type=int, default=8)
    ap.add_argument("--aimet-venv", default=str(REPO / ".venv-aimet"))
    ap.add_argument(
        "--aimet-pythonpath",
        default="",
        help="extra import path for the reference process (e.g. a folder linking the EfficientNet-Lite0 packages)",
    )
    ap.add_argument(
        "--reuse-reference",
        action="store_true",
        help="reuse the AIMET results in --workdir (aimet_quantsim.json, e.g. a copy of "
        "benchmarks/results/compare_quantsim_aimet.json; aimet_quantsim_tensors.pt too when present)",
    )
    ap.add_argument("--cache-dir", default="/tmp/aq_cases")
    ap.add_argument("--workdir", default="/tmp/aq_compare_quantsim")
    ap.add_argument("--out", default=str(HERE / "results" / "compare_quantsim"))
    args = ap.parse_args()
    args.schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    args.modes = [s.strip() for s in args.modes.split(",") if s.strip()]
    bad = [s for s in args.schemes if s not in SCHEMES] + [m for m in args.modes if m not in ("wa", "w", "a")]
    if bad:
        ap.error(f"unknown scheme(s)/mode(s) {bad}; schemes: {', '.join(SCHEMES)}; modes: wa, w, a")
    torch.set_num_threads(args.threads)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[k] = str(args.threads)
    from cases.efficientnet_lite0 import build

    case = build(args.cache_dir)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    job = {
        "case": str(HERE / "cases" / "efficientnet_lite0.py:build"),
        "case_kwargs": {"cache_dir": args.cache_dir},
        "num_threads": args.threads,
        "schemes": args.schemes,
        "modes": args.modes,
        "param_bw": args.param_bw,
        "output_bw": args.output_bw,
        "percentile": args.percentile,
        "output": str(work / "aimet_quantsim.json"),
        "tensors": str(work / "aimet_quantsim_tensors.pt"),
    }
    if not args.reuse_reference:
        (work / "aimet_quantsim_job.json").write_text(json.dumps(job, indent=1))
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), args.aimet_pythonpath, env.get("PYTHONPATH", "")) if p)
        print(f"[quantsim] reference (AIMET) in {args.aimet_venv} ...", flush=True)
        start = time.perf_counter()
        with open(work / "aimet_quantsim.log", "w") as log:
            subprocess.run(
                [
                    str(Path(args.aimet_venv) / "bin" / "python"),
                    str(HERE / "_aimet_quantsim.py"),
                    str(work / "aimet_quantsim_job.json"),
                ],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=True,
            )
        print(f"[quantsim] reference done in {time.perf_counter() - start:.0f} s; aq-search ...", flush=True)
    ref = json.loads((work / "aimet_quantsim.json").read_text())
    tensors = work / "aimet_quantsim_tensors.pt"
    if tensors.exists():
        ref_tensors = torch.load(tensors, weights_only=True)
    else:  # e.g. a reused reference kept without its (large) tensors file: no per-layer table, no cross-check
        print(f"[quantsim] {tensors} is missing: skipping the per-layer encodings and the cross-checks", flush=True)
        ref_tensors = {}
    ours = _ours(case, args, ref_tensors)
    text = _report(args, ref, ours)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"reference": ref, "ours": ours}, indent=1, default=str))
    print(text)


if __name__ == "__main__":
    main()
