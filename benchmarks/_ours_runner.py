"""Run aq-search's AutoQuant on one benchmark case described by a JSON job (the counterpart of
``_aimet_reference.py``; same job keys, same case format, result JSON with the same figures).

Runs in the aq-search venv, in its own process, so that its peak RSS is measured the same way as the
reference's (``ru_maxrss`` of the process)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/_ours_runner.py job.json

Job keys shared with ``_aimet_reference.py``: ``case``, ``case_kwargs``, ``param_bw``, ``output_bw``,
``allowed_accuracy_drop``, ``adaround {num_iterations, num_batches, reg_param?, beta_range?,
warm_start?}``, ``per_channel``, ``results_dir``, ``output``, ``num_threads``, ``seed``. Keys of
ours only (under ``"ours"``): ``search_space`` (name, path or dict), ``n_trials``, ``timeout``,
``study_name``, ``quant_scheme``, ``select_by`` (``eval``/``sqnr``: how ``scheme: select`` ranks pairs),
``drop_stages`` (e.g. ``["amp"]``: the space without
the orderings that use them), ``fixed_adaround`` (default true: the job's AdaRound settings are
used for every trial instead of searching the space's AdaRound ranges).

The result JSON has ``fp32_accuracy``, ``achieved_accuracy``, ``target_accuracy``, ``met_target``,
``eval_calls``, ``eval_log`` (time, num_samples, score, seconds per call, from the start of
``optimize``), ``optimize_wall_s``, ``peak_rss_mib``, ``rss_before_autoquant_mib``, ``pipeline``,
``n_trials``, ``message`` and ``trials`` (the study's timeline: per trial its state, value, pipeline,
eval calls and the cumulative eval call count at its end).
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


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("job", help="path to the JSON job description")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    job_path = os.path.abspath(args.job)
    with open(job_path) as f:
        job = json.load(f)
    ours = dict(job.get("ours") or {})
    base_dirs = [os.path.dirname(job_path), os.getcwd()]
    results_dir = os.path.abspath(job.get("results_dir") or os.path.join(os.path.dirname(job_path), "ours_results"))
    os.makedirs(results_dir, exist_ok=True)
    out_path = os.path.abspath(job.get("output") or os.path.join(results_dir, "result.json"))
    result: dict[str, Any] = {
        "tool": "aq_search.AutoQuant",
        "job": job,
        "fp32_accuracy": None,
        "target_accuracy": None,
        "achieved_accuracy": None,
        "met_target": None,
        "eval_calls": 0,
        "eval_calls_full": 0,
        "eval_seconds_total": 0.0,
        "eval_log": [],
        "optimize_wall_s": None,
        "total_wall_s": None,
        "rss_before_autoquant_mib": None,
        "peak_rss_mib": None,
        "pipeline": None,
        "n_trials": None,
        "n_eval_calls_reported": None,
        "message": None,
        "trials": [],
        "exception": None,
        "versions": {},
    }

    def write() -> None:
        result["total_wall_s"] = time.perf_counter() - t_start
        result["peak_rss_mib"] = _peak_rss_mib()
        tmp = out_path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(result, fh, indent=2, default=str)
        os.replace(tmp, out_path)

    try:
        import optuna
        import torch

        import aq_search
        from aq_search import AdaRoundParams, AutoQuant

        if job.get("num_threads"):
            torch.set_num_threads(int(job["num_threads"]))
        seed = int(job.get("seed", 0))
        torch.manual_seed(seed)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        result["versions"] = {
            "aq_search": getattr(aq_search, "__version__", "?"),
            "optuna": optuna.__version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "torch_threads": torch.get_num_threads(),
        }
        model, dummy_input, calib, eval_fn, built = load_case(job["case"], job.get("case_kwargs", {}), base_dirs)
        meta = dict(built.get("meta") or {}) if isinstance(built, dict) else {}
        eval_size = meta.get("eval_images", meta.get("n_test"))  # subset calls count as num_samples / eval_size
        model.eval()
        result["fp32_accuracy"] = float(eval_fn(model, None))
        t_opt0: list[float | None] = [None]

        def eval_callback(m: torch.nn.Module, num_samples: int | None = None) -> float:
            t0 = time.perf_counter()
            acc = float(eval_fn(m, num_samples))
            t1 = time.perf_counter()
            result["eval_calls"] += 1
            result["eval_calls_full"] += int(num_samples is None)
            result["eval_seconds_total"] += t1 - t0
            result["eval_log"].append(
                {
                    "t": None if t_opt0[0] is None else round(t0 - t_opt0[0], 3),
                    "t_end": None if t_opt0[0] is None else round(t1 - t_opt0[0], 3),
                    "num_samples": num_samples,
                    "accuracy": acc,
                    "seconds": round(t1 - t0, 4),
                }
            )
            return acc

        ada = job.get("adaround") or {}
        ada_kwargs: dict[str, Any] = {}
        if "reg_param" in ada:
            ada_kwargs["reg_param"] = float(ada["reg_param"])
        if "beta_range" in ada:
            ada_kwargs["beta_range"] = tuple(ada["beta_range"])
        if "warm_start" in ada:
            ada_kwargs["warm_start"] = float(ada["warm_start"])
        adaround_params = None
        if ours.get("fixed_adaround", True) and ada:
            adaround_params = AdaRoundParams(
                num_batches=int(ada.get("num_batches", len(calib))),
                num_iterations=int(ada.get("num_iterations", 10000)),
                **ada_kwargs,
            )
        space: Any = ours.get("search_space", "default")
        drop = set(ours.get("drop_stages") or ())
        if drop:  # the same space without the orderings that use these stages (e.g. no AMP)
            space = aq_search.load_search_space(space).to_dict()
            space["orderings"] = [o for o in space["orderings"] if not drop & set(o.split(">"))]
            space["name"] = f"{space.get('name', 'space')}-no-{'-'.join(sorted(drop))}"
        if ours.get("select_by"):  # how `scheme: select` ranks its pairs (eval: AIMET's way)
            space = aq_search.load_search_space(space).to_dict()
            space["scheme"]["select_by"] = ours["select_by"]
            space["name"] = f"{space.get('name', 'space')}-select-by-{ours['select_by']}"
        result["search_space"] = space if isinstance(space, str) else space.get("name")
        per_channel = job.get("per_channel", False)
        aq = AutoQuant(
            model,
            dummy_input,
            calib,
            eval_callback,
            param_bw=int(job["param_bw"]),
            output_bw=int(job["output_bw"]),
            results_dir=results_dir,
            search_space=space,
            storage=ours.get("storage"),
            study_name=ours.get("study_name"),
            seed=seed,
            quant_scheme=ours.get("quant_scheme", "tf_enhanced"),
            per_channel=None if per_channel is None else bool(per_channel),
            adaround_params=adaround_params,
            eval_size=None if eval_size is None else int(eval_size),
        )
        result["eval_size"] = eval_size
        result["rss_before_autoquant_mib"] = _rss_mib()
        t_opt0[0] = time.perf_counter()
        try:
            res = aq.optimize(
                allowed_accuracy_drop=float(job["allowed_accuracy_drop"]),
                n_trials=ours.get("n_trials"),
                timeout=ours.get("timeout"),
            )
        finally:
            result["optimize_wall_s"] = time.perf_counter() - (t_opt0[0] or 0.0)
        result["achieved_accuracy"] = float(res.accuracy)
        result["target_accuracy"] = float(res.target_accuracy)
        result["aq_fp32_accuracy"] = float(res.fp32_accuracy)
        result["met_target"] = bool(res.target_met)
        result["pipeline"] = str(res.pipeline)
        result["n_trials"] = int(res.n_trials)
        result["n_eval_calls_reported"] = int(res.n_eval_calls)
        result["eval_equivalents"] = float(res.n_eval_equivalents)
        result["best_trial"] = int(res.best_trial)
        result["message"] = res.message
        cumulative = int(res.study.user_attrs.get("fp32_eval_calls", 1))
        for t in res.study.trials:
            calls = int(t.user_attrs.get("eval_calls", 0))
            cumulative += calls
            result["trials"].append(
                {
                    "number": t.number,
                    "state": t.state.name,
                    "value": t.value,
                    "pipeline": t.user_attrs.get("pipeline_applied") or t.user_attrs.get("pipeline"),
                    "reference_recipe": bool(t.user_attrs.get("reference_recipe", False)),
                    "eval_calls": calls,
                    "eval_equivalents": t.user_attrs.get("eval_equivalents"),
                    "eval_calls_cumulative": cumulative,
                    "wall_seconds": t.user_attrs.get("wall_seconds"),
                    "stage_scores": t.user_attrs.get("stage_scores"),
                    "pruned_at_stage": t.user_attrs.get("pruned_at_stage"),
                    "error": t.user_attrs.get("error"),
                }
            )
    except BaseException as exc:  # record, never crash without a result file
        result["exception"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        if isinstance(exc, KeyboardInterrupt):
            write()
            raise
    write()
    summary = {
        k: result[k]
        for k in ("fp32_accuracy", "achieved_accuracy", "met_target", "eval_calls", "optimize_wall_s", "peak_rss_mib", "pipeline")
    }
    summary["exception"] = None if result["exception"] is None else result["exception"].splitlines()[-1]
    print("OURS_RESULT " + json.dumps(summary, default=str))
    print(f"wrote {out_path}")
    return 0 if result["exception"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
