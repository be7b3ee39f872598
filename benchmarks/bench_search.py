"""The search benchmark (issue 5): eval calls and wall time to reach the target, per strategy.

On one model and eval (default: the embedded digits CNN at W4A8 per-tensor, allowed drop 0.01),
each strategy runs as a fresh study (new results folder, empty caches), for several seeds:

* ``reference``: AIMET's recipe replayed by aq-search, alone (the study's trial 0 only: scheme
  selection > BN fold > CLE > AdaRound, stopping at the first stage that meets the target);
* ``reference-aimet``: the same, with ``replay_reference: aimet`` (AIMET's own flow: one full eval per
  AIMET scheme pair, the W32 early exit, full evaluations, AdaRound to the last iteration);
* ``search``: the search space as shipped (TPE, the cheap-first schedule enqueued as trial 0 and the
  reference recipe as trial 1, pruning);
* ``random``: plain random sampling over the same space (``sampler: random``, no replayed trial 0),
  with the same trial budget;
* ``fast-first`` (a proposal, not what the space does today): the search, but with trial 0 a cheaper
  recipe than AIMET's, ``bnf > cle > scheme(tf_enhanced/tf_enhanced) > adaround`` (one scheme
  instead of five evaluated candidates), enqueued in place of the replay;
* ``search-noreplay``: the search without the replayed trial 0;
* ``search@<tpe>``: the search with a TPE sampler set up as ``<tpe>`` says (issue 13 point 8): dot-separated
  tokens ``s<N>`` (``n_startup_trials``), ``mv`` (multivariate), ``g`` (group, needs ``mv``), ``cl``
  (constant liar), e.g. ``search@s2.mv.g.cl`` (the ``default`` space's setup) or ``search@s10`` (independent TPE).

Printed per strategy: how many seeds met the target, and eval calls / wall seconds (from the start of
``optimize``) until the first trial that met it (median and range over the seeds that met it), plus
trials used. ``--adaround-iterations`` fixes AdaRound's settings for every trial (else the space's
ranges are searched; the replayed trial 0 then samples them too).

    flock /tmp/aq_cpu.lock python benchmarks/bench_search.py [--case digits|fmnist|effnet] [--seeds 0,1,2] \
        [--space default] [--budget 20] [--threads 1] [--out benchmarks/results/bench_search]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported (it reads the variable then)

import optuna
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import _meta  # noqa: E402  (benchmarks/ is not a package)

CASES = {
    "digits": ("cases/embedded_digits.py:build", "digits CNN (MobileNet-style), top-1 on 797 held-out digits"),
    "fmnist": ("cases/fashion_mnist.py:build", "Fashion-MNIST CNN, top-1 on 10,000 test images"),
    "effnet": ("cases/efficientnet_lite0.py:build", "EfficientNet-Lite0, top-1 agreement with FP32 on 128 images"),
}
EVAL_SIZES = {"digits": 797, "fmnist": 10_000, "effnet": 128}  # samples of the full evaluation (eval-equivalents)


def tpe_sampler(spec: str, seed: int) -> optuna.samplers.TPESampler:
    """A TPE sampler from ``s<N>.mv.g.cl``-style tokens (see the module docstring)."""
    kwargs: dict[str, Any] = {"multivariate": False, "group": False, "constant_liar": False}
    for token in [t for t in spec.split(".") if t]:
        if token.startswith("s") and token[1:].isdigit():
            kwargs["n_startup_trials"] = int(token[1:])
        elif token in ("mv", "g", "cl"):
            kwargs[{"mv": "multivariate", "g": "group", "cl": "constant_liar"}[token]] = True
        else:
            raise SystemExit(f"unknown TPE token {token!r} in {spec!r}: use s<N>, mv, g, cl (e.g. s4.mv.g.cl)")
    if kwargs["group"] and not kwargs["multivariate"]:
        raise SystemExit(f"TPE setup {spec!r}: 'g' (group) needs 'mv' (multivariate)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, **kwargs)


def run_one(case: dict[str, Any], strategy: str, seed: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import aq_search
    from aq_search import AdaRoundParams, AutoQuant

    space = aq_search.load_search_space(args.space).to_dict()
    n_trials: int | None = args.budget
    if strategy in ("reference", "reference-aimet"):
        n_trials = 1  # AIMET's recipe alone: without the cheap-first orderings it is the first trial enqueued
        from aq_search.search._reference import _CHEAP_FIRST  # the cheap-first trial 0's orderings

        space["orderings"] = [o for o in space["orderings"] if o not in _CHEAP_FIRST]
        if strategy == "reference-aimet":
            space["replay_reference"] = "aimet"  # AIMET AutoQuant's own flow (see aq_search/search/_aimet_flow.py)
    elif strategy == "random":
        space["sampler"] = "random"
        space["replay_reference"] = False
    elif strategy in ("search-noreplay", "fast-first"):
        space["replay_reference"] = False
    sampler = tpe_sampler(strategy.partition("@")[2], seed) if strategy.startswith("search@") else None
    space["max_trials"] = max(int(space.get("max_trials", 20)), args.budget)
    log: list[dict[str, Any]] = []
    t0: list[float | None] = [None]

    def eval_callback(model: torch.nn.Module, num_samples: int | None = None) -> float:
        acc = float(case["eval_fn"](model, num_samples))
        log.append({"t_end": None if t0[0] is None else time.perf_counter() - t0[0], "num_samples": num_samples, "acc": acc})
        return acc

    results_dir = workdir / f"{strategy}_seed{seed}"
    shutil.rmtree(results_dir, ignore_errors=True)
    adaround = None
    if args.adaround_iterations:
        adaround = AdaRoundParams(num_batches=len(case["calib_batches"]), num_iterations=args.adaround_iterations)
    aq = AutoQuant(
        case["model"],
        case["dummy_input"],
        case["calib_batches"],
        eval_callback,
        param_bw=args.param_bw,
        output_bw=args.output_bw,
        results_dir=results_dir,
        search_space=space,
        seed=seed,
        per_channel=args.per_channel,
        adaround_params=adaround,
        eval_size=EVAL_SIZES[args.case],
        sampler=sampler,
    )
    if strategy == "fast-first":
        # enqueue the cheap first trial in the study AutoQuant will open (same storage and default name)
        results_dir.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(
            study_name=f"aq-search-{type(case['model']).__name__}-w{args.param_bw}a{args.output_bw}",
            storage=f"sqlite:///{(results_dir / 'study.db').resolve()}",
            direction="maximize",
        )
        study.enqueue_trial(
            {
                "pipeline__ordering": "bnf>cle>scheme>adaround",
                "scheme__candidate": "tf_enhanced/tf_enhanced",
                "cle__high_bias_absorption": True,
            }
        )
    torch.manual_seed(seed)
    started = time.perf_counter()
    t0[0] = started
    res = aq.optimize(allowed_accuracy_drop=args.allowed_drop, n_trials=n_trials)
    wall = time.perf_counter() - started
    size = EVAL_SIZES[args.case]
    equivalents = [1.0 if e["num_samples"] is None else min(int(e["num_samples"]), size) / size for e in log]
    cumulative = int(res.study.user_attrs.get("fp32_eval_calls", 1))
    reach = None
    for t in res.study.trials:
        cumulative += int(t.user_attrs.get("eval_calls", 0))
        if (
            reach is None
            and t.state == optuna.trial.TrialState.COMPLETE
            and t.value is not None
            and t.value >= res.target_accuracy
            and t.user_attrs.get("within_budget", True) is not False
        ):
            reach = {
                "trial": t.number,
                "eval_calls": cumulative,
                "eval_equivalents": round(sum(equivalents[:cumulative]), 4),
                "seconds": log[cumulative - 1]["t_end"] if cumulative <= len(log) else None,
                "pipeline": t.user_attrs.get("pipeline_applied"),
            }
    first = res.study.trials[0].user_attrs if res.study.trials else {}
    trials = [_trial_record(t) for t in res.study.trials]
    reference_trial = next((r for r in trials if r["reference_recipe"]), None)
    shutil.rmtree(results_dir, ignore_errors=True)
    return {
        "strategy": strategy,
        "seed": seed,
        "target_met": bool(res.target_met),
        "accuracy": float(res.accuracy),
        "fp32": float(res.fp32_accuracy),
        "target": float(res.target_accuracy),
        "trials": int(res.n_trials),
        "eval_calls": len(log),
        "eval_equivalents": round(sum(equivalents), 4),
        "relative_bops": res.relative_bops,
        "wall_s": wall,
        "reach": reach,
        "pipeline": str(res.pipeline),
        "reference_flow": first.get("reference_flow"),
        "reference_early_exit": first.get("reference_early_exit"),
        "reference_w32": first.get("reference_w32"),
        "reference_trial": reference_trial,
        "trial_records": trials,
    }


def _trial_record(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """One trial in short: its value (its best stage), which stage won, its cost and whether it is the reference."""
    a = t.user_attrs
    return {
        "trial": t.number,
        "state": t.state.name,
        "value": t.value,
        "reference_recipe": bool(a.get("reference_recipe")),
        "ordering": a.get("ordering"),
        "best_stage_label": a.get("best_stage_label"),
        "pipeline_applied": a.get("pipeline_applied"),
        "within_budget": a.get("within_budget"),
        "eval_calls": a.get("eval_calls"),
        "eval_equivalents": a.get("eval_equivalents"),
        "wall_seconds": a.get("wall_seconds"),
    }


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    met = [r for r in runs if r["reach"] is not None]

    def stats(values: list[float]) -> str:
        if not values:
            return "-"
        if len(values) == 1:
            return f"{values[0]:.4g}"
        return f"{statistics.median(values):.4g} ({min(values):.4g}-{max(values):.4g})"

    return {
        "met": f"{len(met)}/{len(runs)}",
        "calls": stats([r["reach"]["eval_calls"] for r in met]),
        "equivalents": stats([r["reach"]["eval_equivalents"] for r in met]),
        "total_equivalents": stats([r["eval_equivalents"] for r in runs]),
        "seconds": stats([r["reach"]["seconds"] for r in met]),
        "trials_to_target": stats([r["reach"]["trial"] + 1 for r in met]),
        "best_if_missed": stats([r["accuracy"] for r in runs if r["reach"] is None]),
        "total_calls": stats([r["eval_calls"] for r in runs]),
        "total_seconds": stats([r["wall_s"] for r in runs]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="digits", choices=sorted(CASES))
    ap.add_argument(
        "--strategies",
        default="reference,search,random,fast-first",
        help="reference, reference-aimet, search, random, fast-first, search-noreplay, search@<tpe> (e.g. search@s2.mv.g.cl)",
    )
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--space", default="default")
    ap.add_argument("--budget", type=int, default=20, help="trials for search and random")
    ap.add_argument("--param-bw", type=int, default=4)
    ap.add_argument("--output-bw", type=int, default=8)
    ap.add_argument("--per-channel", action="store_true", help="per-channel weights (default per-tensor)")
    ap.add_argument("--allowed-drop", type=float, default=0.01)
    ap.add_argument("--adaround-iterations", type=int, default=None, help="fix AdaRound (else searched)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", default="/tmp/aq_cases")
    ap.add_argument("--workdir", default="/tmp/aq_bench_search")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_search"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from _aimet_reference import load_case

    spec, title = CASES[args.case]
    model, dummy, calib, eval_fn, _ = load_case(str(HERE / spec), {"cache_dir": args.cache_dir}, [str(HERE)])
    case = {"model": model.eval(), "dummy_input": dummy, "calib_batches": calib, "eval_fn": eval_fn}
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    header = {  # taken before the runs: a commit made while they run must not be credited with them
        "command": f"flock /tmp/aq_cpu.lock python {' '.join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])}",
        "date": _meta.now(),
        "source": _meta.source_state(),
    }
    failed: list[str] = []
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        for strategy in strategies:
            try:
                r = run_one(case, strategy, seed, args, workdir)
            except Exception as err:  # noqa: BLE001  # one failed run is reported, the others go on
                print(f"[bench_search] {strategy} seed {seed} FAILED: {type(err).__name__}: {err}", flush=True)
                failed.append(f"{strategy} seed {seed}")
                continue
            runs.append(r)
            reach = r["reach"]
            print(
                f"[bench_search] {strategy:15} seed {seed}: met {r['target_met']} acc {r['accuracy']:.4f} "
                f"(target {r['target']:.4f}); to target: "
                + ("-" if reach is None else f"{reach['eval_calls']} calls, {reach['seconds']:.1f} s, trial {reach['trial']}")
                + f"; total {r['trials']} trials, {r['eval_calls']} calls, {r['wall_s']:.1f} s; {r['pipeline']}"
                + (f"; reference flow {r['reference_flow']}" if r.get("reference_flow") else "")
                + (f"; {r['reference_early_exit']}" if r.get("reference_early_exit") else ""),
                flush=True,
            )
            write_report(runs, strategies, seeds, args, title, header, failed)
    print(write_report(runs, strategies, seeds, args, title, header, failed), end="")


def _per_seed(runs: list[dict[str, Any]]) -> list[str]:
    """One row per run: what it returned, when it met the target, and what trial 0 / the reference trial scored."""

    def trial(rec: dict[str, Any] | None) -> str:
        if rec is None or rec.get("value") is None:
            return "-" if rec is None else f"trial {rec['trial']} {rec['state'].lower()}"
        return f"{rec['value']:.4f} (trial {rec['trial']}, best stage {rec.get('best_stage_label') or '?'})"

    rows = [
        "| strategy | seed | met | returned acc. | trial that met | eval-equivalents to target | trial 0 | reference trial |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        reach = r["reach"]
        first = r["trial_records"][0] if r.get("trial_records") else None
        rows.append(
            f"| {r['strategy']} | {r['seed']} | {'yes' if reach else 'no'} | {r['accuracy']:.4f} | "
            f"{'-' if reach is None else reach['trial']} | {'-' if reach is None else reach['eval_equivalents']} | "
            f"{trial(first)} | {trial(r.get('reference_trial'))} |"
        )
    return rows


def write_report(
    runs: list[dict[str, Any]],
    strategies: list[str],
    seeds: list[int],
    args: argparse.Namespace,
    title: str,
    header: dict[str, str],
    failed: list[str],
) -> str:
    """Write the Markdown table and the JSON (after every run, so a stopped benchmark keeps what it measured)."""
    if not runs:
        return ""
    fp32, target = runs[0]["fp32"], runs[0]["target"]
    lines = [
        f"Command: `{header['command']}`  ",
        f"Machine: {_meta.machine()}; {args.threads} torch thread(s); date {header['date']}; aq-search "
        f"{header['source']}; all runs in one process, one after the other.  ",
        f"Case: {title}; W{args.param_bw}A{args.output_bw} {'per-channel' if args.per_channel else 'per-tensor'}; FP32 "
        f"{fp32:.4f}; allowed drop {args.allowed_drop} (target {target:.4f}); space `{args.space}`; budget {args.budget} "
        f"trials (reference: 1); AdaRound "
        + (f"fixed at {args.adaround_iterations} iterations" if args.adaround_iterations else "searched in the space's ranges")
        + f"; seeds {seeds}.",
        "",
        "| strategy | target met | eval-equivalents to target | eval calls to target | seconds to target | trials to target "
        "| best acc. when missed | eval-equivalents (whole run) | eval calls (whole run) | seconds (whole run) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for strategy in strategies:
        if not any(r["strategy"] == strategy for r in runs):
            done = len(runs) + len(failed) >= len(seeds) * len(strategies)
            lines.append(f"| {strategy} | {'failed (see the log)' if done else 'not run yet'} | | | | | | | | |")
            continue
        s = _summary([r for r in runs if r["strategy"] == strategy])
        lines.append(
            f"| {strategy} | {s['met']} | {s['equivalents']} | {s['calls']} | {s['seconds']} | {s['trials_to_target']} "
            f"| {s['best_if_missed']} | {s['total_equivalents']} | {s['total_calls']} | {s['total_seconds']} |"
        )
    lines += [
        "",
        "Median (min-max) over the seeds that met the target (within the BOPs budget); whole-run figures over all "
        "seeds. Eval-equivalents: evaluated samples / the full evaluation's size (a full evaluation counts 1).",
        "",
        *_per_seed(runs),
        "",
        f"Runs finished: {len(runs)} of {len(seeds) * len(strategies)}" + (f"; failed: {', '.join(failed)}." if failed else "."),
    ]
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "header": header, "runs": runs}, indent=1, default=str))
    return text


if __name__ == "__main__":
    main()
