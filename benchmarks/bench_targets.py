"""Deployment targets side by side: EfficientNet-Lite0 W8A8, the baseline each target's profile gives.

For each target, ``AutoQuant(..., target=t).run_inference()`` (BatchNorms folded, ``tf_enhanced`` ranges,
per-channel weights, the target's activation grid: signed symmetric int8 for ``tensorrt``, unsigned
asymmetric uint8 for the others), scored by top-1 agreement with FP32 on augmented ImageNet views, and
the sim's ONNX file checked against the target's rules. One process, the targets one after the other,
the same calibration and evaluation data.

    OMP_NUM_THREADS=1 python benchmarks/bench_targets.py --num-eval 128

With ``--search SPACE`` each target also runs a search (``aq.optimize`` over that space, at most
``--n-trials`` trials, ``--allowed-drop``) and the table adds the searched model's agreement, whether it
met the target, its eval calls and the search's seconds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from aq_search import AutoQuant, check_onnx, export_onnx
from aq_search.examples import imagenet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-eval", type=int, default=128)
    parser.add_argument("--num-calib", type=int, default=32)
    parser.add_argument("--targets", default="generic,onnxruntime,qnn,tensorrt")
    parser.add_argument("--search", default=None, help="also search this space per target (e.g. fast)")
    parser.add_argument("--n-trials", type=int, default=3)
    parser.add_argument("--allowed-drop", type=float, default=0.01)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = imagenet.load_efficientnet_lite0()
    calib = imagenet.augmented_images(args.num_calib, seed=1)
    views = imagenet.augmented_images(args.num_eval, seed=7)
    reference = imagenet.predict(model, views)

    def eval_callback(m: torch.nn.Module, num_samples: int | None = None) -> float:
        n = len(views) if num_samples is None else min(num_samples, len(views))
        return imagenet.agreement(imagenet.predict(m, views[:n]), reference[:n])

    batches = [calib[i : i + 16] for i in range(0, len(calib), 16)]
    print(
        f"EfficientNet-Lite0 W8A8 per-channel, {args.num_calib} calibration views, "
        f"top-1 agreement with FP32 on {args.num_eval} views"
    )
    extra = " search agreement | target met | search eval calls | search seconds |" if args.search else ""
    print("| target | activations | run_inference agreement | ONNX check | ONNX vs sim top-1 | seconds |" + extra)
    print("| --- | --- | --- | --- | --- | --- |" + (" --- | --- | --- | --- |" if args.search else ""))
    with tempfile.TemporaryDirectory() as tmp:
        for target in args.targets.split(","):
            start = time.perf_counter()
            aq = AutoQuant(
                model,
                calib[:1],
                batches,
                eval_callback,
                param_bw=8,
                output_bw=8,
                results_dir=Path(tmp) / target,
                target=target,
                search_space=args.search or "default",
                progress=False,
            )
            sim, acc = aq.run_inference()
            export = export_onnx(sim, None, Path(tmp) / f"{target}.onnx", validation_inputs=views[:32])
            check = check_onnx(export.path, target)
            grid = "int8 symmetric" if aq.deployment_target.activation_symmetric else "uint8 asymmetric"
            v = export.validation
            agree = f"{v.top1_agreement:.4f}" if v is not None and v.top1_agreement is not None else "-"
            ok = "pass" if check.ok else f"{len(check.violations)} violations"
            row = f"| {target} | {grid} | {acc:.4f} | {ok} | {agree} | {time.perf_counter() - start:.0f} |"
            if args.search:
                begin = time.perf_counter()
                result = aq.optimize(allowed_accuracy_drop=args.allowed_drop, n_trials=args.n_trials)
                seconds = time.perf_counter() - begin
                row += f" {result.accuracy:.4f} | {result.target_met} | {result.n_eval_calls} | {seconds:.0f} |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
