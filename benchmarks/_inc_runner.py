"""Intel Neural Compressor's accuracy-driven tuning on one benchmark case (the job format of
``_aimet_reference.py``), for ``benchmarks/compare_reference.py --inc``.

Runs INSIDE the INC venv (``benchmarks/inc_env.sh``: neural-compressor 3.7 on torch 2.13.0 CPU); does
not import aq_search. Usage::

    OMP_NUM_THREADS=1 .venv-inc/bin/python benchmarks/_inc_runner.py job.json

INC 3.7's 2.x API: ``neural_compressor.quantization.fit(model, PostTrainingQuantConfig(approach="static",
quant_level=1, tuning_criterion=TuningCriterion(strategy=<basic|hawq_v2>, max_trials=...),
accuracy_criterion=AccuracyCriterion(criterion="absolute", tolerable_loss=<allowed drop>)),
calib_dataloader, eval_func)``. Static int8 only (torch.ao FX, x86/fbgemm kernels): the model it returns
runs real int8 kernels, not a fake-quant simulation. ``hawq_v2`` needs a loss on labelled batches: the
calibration images get the FP32 model's own top-1 as pseudo-labels (no data beyond what the other
tools get), cross-entropy as the loss.

Extra job keys: ``inc {strategy, max_trials, timeout}``. Writes the result JSON (``output``) with the
figures of the other runners: ``fp32_accuracy``, ``achieved_accuracy``, ``met_target``, ``eval_calls``,
``eval_log``, ``optimize_wall_s``, ``peak_rss_mib``, ``rss_before_autoquant_mib``, ``exception``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import traceback
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _aimet_reference import _rss_mib, load_case


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("job")
    args = ap.parse_args()
    t_start = time.perf_counter()
    with open(args.job) as f:
        job = json.load(f)
    inc = dict(job.get("inc") or {})
    out_path = os.path.abspath(job["output"])
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    result: dict[str, Any] = {
        "tool": f"neural_compressor fit ({inc.get('strategy', 'basic')})",
        "job": job,
        "fp32_accuracy": None,
        "target_accuracy": None,
        "achieved_accuracy": None,
        "met_target": None,
        "model_returned": False,
        "eval_calls": 0,
        "eval_log": [],
        "optimize_wall_s": None,
        "rss_before_autoquant_mib": None,
        "peak_rss_mib": None,
        "exception": None,
        "versions": {},
    }
    try:
        import warnings

        warnings.filterwarnings("ignore")
        import neural_compressor
        import torch
        from neural_compressor.config import AccuracyCriterion, PostTrainingQuantConfig, TuningCriterion
        from neural_compressor.quantization import fit

        torch.set_num_threads(int(job.get("num_threads", 1)))
        torch.manual_seed(int(job.get("seed", 0)))
        result["versions"] = {
            "neural_compressor": neural_compressor.__version__,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
        if int(job["param_bw"]) != 8 or int(job["output_bw"]) != 8:
            raise NotImplementedError(
                f"W{job['param_bw']}A{job['output_bw']}: INC's static post-training quantization for PyTorch is int8 only "
                "(4-bit weights exist only as weight-only quantization of Linear/MatMul layers, not for convolutions)"
            )
        model, _, calib, eval_fn, _ = load_case(job["case"], job.get("case_kwargs", {}), [os.getcwd()])
        model.eval()
        fp32 = float(eval_fn(model, None))
        result["fp32_accuracy"] = fp32
        result["target_accuracy"] = fp32 - float(job["allowed_accuracy_drop"])
        images = torch.cat(calib)
        with torch.no_grad():
            pseudo = torch.cat([model(b).argmax(1) for b in calib])

        class _Data(torch.utils.data.Dataset):
            def __len__(self) -> int:
                return len(images)

            def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
                return images[i], pseudo[i]

        loader = torch.utils.data.DataLoader(_Data(), batch_size=len(calib[0]), shuffle=False)
        t0: list[float | None] = [None]

        def eval_func(m: torch.nn.Module) -> float:
            start = time.perf_counter()
            acc = float(eval_fn(m, None))
            result["eval_calls"] += 1
            result["eval_log"].append(
                {
                    "t_end": None if t0[0] is None else round(time.perf_counter() - t0[0], 3),
                    "accuracy": acc,
                    "seconds": round(time.perf_counter() - start, 4),
                }
            )
            return acc

        strategy = inc.get("strategy", "basic")
        kwargs: dict[str, Any] = {}
        if strategy == "hawq_v2":
            kwargs["strategy_kwargs"] = {"hawq_v2_loss": torch.nn.CrossEntropyLoss()}
        conf = PostTrainingQuantConfig(
            approach="static",
            backend="default",
            quant_level=1,
            calibration_sampling_size=[len(images)],
            accuracy_criterion=AccuracyCriterion(criterion="absolute", tolerable_loss=float(job["allowed_accuracy_drop"])),
            tuning_criterion=TuningCriterion(
                strategy=strategy, max_trials=int(inc.get("max_trials", 100)), timeout=int(inc.get("timeout", 0)), **kwargs
            ),
        )
        result["rss_before_autoquant_mib"] = _rss_mib()
        started = time.perf_counter()
        t0[0] = started
        try:
            q_model = fit(model, conf, calib_dataloader=loader, eval_func=eval_func)
        finally:
            result["optimize_wall_s"] = time.perf_counter() - started
        if q_model is not None:
            result["model_returned"] = True
            acc = float(eval_fn(q_model.model, None))
            result["achieved_accuracy"] = acc
            result["met_target"] = acc >= result["target_accuracy"] - 1e-12
            cfg = getattr(q_model, "q_config", None) or {}
            ops = cfg.get("op", {}) if isinstance(cfg, dict) else {}
            result["fp32_ops"] = sorted(
                str(k) for k, v in ops.items() if isinstance(v, dict) and v.get("weight", {}).get("dtype") == "fp32"
            )
        else:
            result["achieved_accuracy"] = None
            result["met_target"] = False
    except BaseException as exc:  # record, never crash without a result file
        result["exception"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        if isinstance(exc, KeyboardInterrupt):
            raise
    finally:
        result["total_wall_s"] = time.perf_counter() - t_start
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        with open(out_path, "w") as fh:
            json.dump(result, fh, indent=2, default=str)
    summary = {
        k: result[k]
        for k in (
            "fp32_accuracy",
            "achieved_accuracy",
            "met_target",
            "eval_calls",
            "optimize_wall_s",
            "peak_rss_mib",
            "model_returned",
        )
    }
    summary["exception"] = None if result["exception"] is None else result["exception"].strip().splitlines()[-1]
    print("INC_RESULT " + json.dumps(summary, default=str))
    return 0 if result["exception"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
