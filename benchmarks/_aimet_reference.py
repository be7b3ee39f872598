#!/usr/bin/env python
"""Run Qualcomm AIMET AutoQuant (aimet-torch 2.30.0) on one benchmark case.

Runs INSIDE the AIMET venv built by ``benchmarks/aimet_env.sh``; it must not
import aq_search (not installed there).  Usage::

    OMP_NUM_THREADS=1 .venv-aimet/bin/python benchmarks/_aimet_reference.py job.json

``job.json`` (relative paths are resolved against the job file's directory
first, then the current directory)::

    {
      "case": "benchmarks/cases/digits.py:build",   # FILE.py:FUNC or pkg.module:FUNC
      "case_kwargs": {"cache_dir": "/tmp/aq_cases"},  # passed to FUNC
      "param_bw": 4, "output_bw": 8,
      "allowed_accuracy_drop": 0.01,                 # absolute, same units as eval_fn
      "adaround": {"num_iterations": 200, "num_batches": 8},   # optional keys:
                  # reg_param, beta_range [start, end], warm_start
      "quant_scheme": "post_training_tf_enhanced",   # optional; AutoQuant re-picks it anyway
      "rounding_mode": "nearest",                    # optional
      "mixed_precision": null,  # or {"candidates": [[out_bw, param_bw], ...],
                                #     "num_samples_for_phase_1": 128,
                                #     "num_samples_for_phase_2": null}
      "results_dir": "/tmp/aimet_run",               # AIMET artefacts go here
      "output": "/tmp/aimet_run/result.json",        # default: <results_dir>/result.json
      "per_channel": null,      # true: default_config_per_channel.json, false: default_config.json
                                #   (per-tensor weights); null: AIMET's default, which in 2.30 is
                                #   per-channel; "config_file" overrides all three
      "num_threads": 1, "seed": 0, "strict_validation": true,
      "verify": true            # re-evaluate AIMET's exported encodings ourselves
    }

``FUNC(**case_kwargs)`` returns either a dict with keys ``model``,
``dummy_input``, ``calib_batches``, ``eval_fn`` (see benchmarks/cases/digits.py)
or a tuple ``(model, dummy_input, calib_batches, eval_fn)``;
``eval_fn(model, num_samples=None) -> float`` (higher is better).

The result JSON is always written, also when AIMET raises or returns no model.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import resource
import sys
import time
import traceback
from typing import Any


def _rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _resolve(path: str, base_dirs: list[str]) -> str:
    if os.path.isabs(path):
        return path
    for base in base_dirs:
        cand = os.path.join(base, path)
        if os.path.exists(cand):
            return os.path.abspath(cand)
    return os.path.abspath(path)


def load_case(spec: str, kwargs: dict[str, Any], base_dirs: list[str]):
    """``spec`` is 'path/to/file.py:func' or 'pkg.module:func'."""
    target, _, func = spec.rpartition(":")
    if not target:
        target, func = spec, "build"
    if target.endswith(".py") or os.sep in target:
        path = _resolve(target, base_dirs)
        mod_name = "_aq_case_" + os.path.splitext(os.path.basename(path))[0]
        mspec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(mspec)
        sys.modules[mod_name] = module
        mspec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    out = getattr(module, func)(**kwargs)
    if isinstance(out, dict):
        return out["model"], out["dummy_input"], list(out["calib_batches"]), out["eval_fn"], out
    model, dummy_input, calib, eval_fn = out
    return model, dummy_input, list(calib), eval_fn, {}


def _stage_report(eval_manager) -> list[dict[str, Any]]:
    stages = []
    for title, sess in getattr(eval_manager, "_all_sessions", {}).items():
        res = dict(sess.result)
        ptq = sess.ptq_result
        stages.append({
            "stage": title,
            "status": res.get("status"),
            "error": None if res.get("error") is None else repr(res.get("error")),
            "target_satisfied": res.get("target_satisfied"),
            "effective": res.get("effective"),
            "accuracy": None if ptq is None else float(ptq.accuracy),
            "applied_techniques": None if ptq is None else list(ptq.applied_techniques),
            "encoding_path": None if ptq is None else ptq.encoding_path,
        })
    return stages


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("job", help="path to the JSON job description")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    job_path = os.path.abspath(args.job)
    with open(job_path) as f:
        job = json.load(f)
    base_dirs = [os.path.dirname(job_path), os.getcwd()]

    results_dir = os.path.abspath(job.get("results_dir") or os.path.join(
        os.path.dirname(job_path), "aimet_results"))
    os.makedirs(results_dir, exist_ok=True)
    out_path = os.path.abspath(job.get("output") or os.path.join(results_dir, "result.json"))

    result: dict[str, Any] = {
        "tool": "aimet_torch.AutoQuant",
        "job": job,
        "fp32_accuracy": None,            # our eval_fn on the unquantized model
        "aimet_fp32_accuracy": None,      # AutoQuant's own FP32 eval (same callback)
        "target_accuracy": None,
        "achieved_accuracy": None,        # AutoQuant's returned eval score (W+A quantized sim)
        "model_returned": False,
        "returned_model_weight_only_accuracy": None,  # returned model = FP32 graph w/ QDQ'd weights
        "verified_accuracy": None,        # our re-eval of a fresh sim + AIMET's encodings
        "met_target": None,
        "eval_calls": 0,
        "eval_calls_quantized": 0,
        "eval_calls_full": 0,             # calls with num_samples=None (whole eval set)
        "eval_seconds_total": 0.0,
        "eval_log": [],
        "optimize_wall_s": None,
        "total_wall_s": None,
        "rss_before_autoquant_mib": None,
        "peak_rss_mib": None,
        "chosen_quant_scheme": None,
        "applied_techniques": None,
        "encoding_path": None,
        "stages": [],
        "pareto_front": None,
        "exception": None,
        "versions": {},
    }

    def write():
        result["total_wall_s"] = time.perf_counter() - t_start
        result["peak_rss_mib"] = _peak_rss_mib()
        tmp = out_path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(result, fh, indent=2, default=str)
        os.replace(tmp, out_path)

    auto_quant = None
    try:
        import torch
        from torch.utils.data import DataLoader, Dataset

        if job.get("num_threads"):
            torch.set_num_threads(int(job["num_threads"]))
        seed = int(job.get("seed", 0))
        torch.manual_seed(seed)

        import aimet_torch
        from aimet_torch.adaround import AdaroundParameters
        from aimet_torch.auto_quant import AutoQuant, AutoQuantWithAutoMixedPrecision
        from aimet_torch.common.defs import QuantizationDataType, QuantScheme

        result["versions"] = {"aimet_torch": getattr(aimet_torch, "__version__", "?"),
                              "torch": torch.__version__, "python": sys.version.split()[0],
                              "torch_threads": torch.get_num_threads()}

        model, dummy_input, calib, eval_fn, _ = load_case(
            job["case"], job.get("case_kwargs", {}), base_dirs)
        model.eval()
        result["fp32_accuracy"] = float(eval_fn(model, None))

        # AutoQuant insists on a real torch DataLoader (it reads .dataset / .batch_size).
        samples = torch.cat([b if isinstance(b, torch.Tensor) else b[0] for b in calib])
        batch_size = int(calib[0].shape[0] if isinstance(calib[0], torch.Tensor) else calib[0][0].shape[0])

        class _Unlabeled(Dataset):
            def __len__(self):
                return samples.shape[0]

            def __getitem__(self, i):
                return samples[i]

        loader = DataLoader(_Unlabeled(), batch_size=batch_size, shuffle=False)

        def _is_quantized(m) -> bool:
            try:
                from aimet_torch.nn import BaseQuantizationMixin
                return any(isinstance(x, BaseQuantizationMixin) for x in m.modules())
            except Exception:  # noqa: BLE001  # pragma: no cover - any failure: "not quantized"
                return False

        t_opt0 = [None]

        def eval_callback(m, num_samples=None):
            t0 = time.perf_counter()
            acc = float(eval_fn(m, num_samples))
            dt = time.perf_counter() - t0
            q = _is_quantized(m)
            result["eval_calls"] += 1
            result["eval_calls_quantized"] += int(q)
            result["eval_seconds_total"] += dt
            result["eval_calls_full"] += int(num_samples is None)
            result["eval_log"].append({
                "t": None if t_opt0[0] is None else round(t0 - t_opt0[0], 3),
                "num_samples": num_samples, "quantized": q,
                "accuracy": acc, "seconds": round(dt, 4)})
            return acc

        qs_name = job.get("quant_scheme", "post_training_tf_enhanced")
        quant_scheme = getattr(QuantScheme, qs_name)
        param_bw, output_bw = int(job["param_bw"]), int(job["output_bw"])
        config_file = job.get("config_file")
        if config_file is None and job.get("per_channel") is not None:
            # AIMET 2.30's QuantizationSimModel uses default_config_per_channel.json when config_file
            # is None (per-channel weights); per-tensor weights need default_config.json explicitly.
            import aimet_torch.common.quantsim_config as _qcfg
            name = "default_config_per_channel.json" if job["per_channel"] else "default_config.json"
            config_file = os.path.join(os.path.dirname(_qcfg.__file__), name)
        result["config_file"] = config_file
        common = dict(param_bw=param_bw, output_bw=output_bw, quant_scheme=quant_scheme,
                      results_dir=results_dir, config_file=config_file,
                      strict_validation=bool(job.get("strict_validation", True)))
        # Pass-through modules AIMET has no quantized definition for (EfficientNet-Lite0's
        # efficientnet_lite_pytorch.utils.Identity, used as static padding): AIMET's own error
        # message tells the user to exclude them with QuantizationMixin.ignore, which is what we do.
        from aimet_torch.nn import QuantizationMixin
        ignored = sorted({type(m) for m in model.modules() if type(m).__name__ == "Identity"
                          and type(m) is not torch.nn.Identity}, key=lambda c: c.__qualname__)
        for cls in ignored:
            QuantizationMixin.ignore(cls)
        result["aimet_ignored_modules"] = [f"{c.__module__}.{c.__qualname__}" for c in ignored]
        amp = job.get("mixed_precision")
        if amp:
            auto_quant = AutoQuantWithAutoMixedPrecision(model, dummy_input, loader, eval_callback,
                                                         **common)
            base = auto_quant._auto_quant_base
        else:
            auto_quant = AutoQuant(model, dummy_input, loader, eval_callback,
                                   rounding_mode=job.get("rounding_mode", "nearest"), **common)
            base = auto_quant

        ada = job.get("adaround") or {}
        ada_kwargs = {}
        if "reg_param" in ada:
            ada_kwargs["default_reg_param"] = float(ada["reg_param"])
        if "beta_range" in ada:
            ada_kwargs["default_beta_range"] = tuple(ada["beta_range"])
        if "warm_start" in ada:
            ada_kwargs["default_warm_start"] = float(ada["warm_start"])
        auto_quant.set_adaround_params(AdaroundParameters(
            loader, int(ada.get("num_batches", len(loader))),
            default_num_iterations=ada.get("num_iterations"), **ada_kwargs))

        if amp:
            cands = [((int(o), QuantizationDataType.int), (int(p), QuantizationDataType.int))
                     for o, p in amp["candidates"]]
            amp_kwargs = {}
            for k in ("num_samples_for_phase_1", "num_samples_for_phase_2"):
                if k in amp:
                    amp_kwargs[k] = amp[k]
            auto_quant.set_mixed_precision_params(cands, **amp_kwargs)

        result["rss_before_autoquant_mib"] = _rss_mib()
        t_opt0[0] = time.perf_counter()
        try:
            ret = auto_quant.optimize(allowed_accuracy_drop=float(job["allowed_accuracy_drop"]))
        finally:
            result["optimize_wall_s"] = time.perf_counter() - t_opt0[0]
            try:
                result["stages"] = _stage_report(base.eval_manager)
                qs = base._quantsim_params.get("quant_scheme")
                result["chosen_quant_scheme"] = None if qs is None else str(qs)
                if base._fp32_acc is not None:
                    result["aimet_fp32_accuracy"] = float(base._fp32_acc)
                    result["target_accuracy"] = (float(base._fp32_acc)
                                                 - float(job["allowed_accuracy_drop"]))
            except Exception as exc:  # noqa: BLE001  # diagnostics only
                result["stage_report_error"] = repr(exc)

        best_model, acc, enc_path = ret[0], ret[1], ret[2]
        if len(ret) > 3 and ret[3] is not None:
            result["pareto_front"] = [[p[0], p[1], str(p[2]), str(p[3])] for p in ret[3]]
        result["model_returned"] = best_model is not None
        result["achieved_accuracy"] = None if acc is None else float(acc)
        result["encoding_path"] = enc_path
        if result["target_accuracy"] is not None and acc is not None:
            result["met_target"] = bool(acc >= result["target_accuracy"] - 1e-12)
        for st in result["stages"]:
            if st["encoding_path"] and st["encoding_path"] == enc_path:
                result["applied_techniques"] = st["applied_techniques"]

        if best_model is not None:
            best_model.eval()
            result["returned_model_weight_only_accuracy"] = float(eval_fn(best_model, None))
            # sim.export() writes ONNX-named "<stage>.encodings" plus torch-named
            # "<stage>_torch.encodings"; only the latter loads back into a torch sim.
            torch_enc = enc_path[:-len(".encodings")] + "_torch.encodings" if enc_path else None
            result["torch_encoding_path"] = torch_enc
            if job.get("verify", True) and torch_enc and os.path.exists(torch_enc):
                try:
                    from aimet_torch.quantsim import QuantizationSimModel
                    sim = QuantizationSimModel(best_model, dummy_input,
                                               quant_scheme=QuantScheme.post_training_tf,
                                               default_param_bw=param_bw,
                                               default_output_bw=output_bw,
                                               config_file=config_file)
                    sim.load_encodings(torch_enc, strict=True, partial=False,
                                       requires_grad=False, allow_overwrite=False)
                    result["verified_accuracy"] = float(eval_fn(sim.model, None))
                except Exception as exc:  # noqa: BLE001  # recorded in the result
                    result["verify_error"] = f"{type(exc).__name__}: {exc}"
    except BaseException as exc:  # record, never crash without a result file
        result["exception"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        if isinstance(exc, KeyboardInterrupt):
            write()
            raise
    write()
    summary = {k: result[k] for k in ("fp32_accuracy", "aimet_fp32_accuracy", "achieved_accuracy",
                                      "verified_accuracy", "model_returned", "met_target",
                                      "eval_calls", "optimize_wall_s", "peak_rss_mib",
                                      "chosen_quant_scheme", "applied_techniques")}
    summary["exception"] = None if result["exception"] is None else result["exception"].splitlines()[-1]
    print("AIMET_RESULT " + json.dumps(summary, default=str))
    print(f"wrote {out_path}")
    return 0 if result["exception"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
