"""Run one fixed pipeline on a benchmark case and print each stage's score (an experiment, not a comparison).

The search space is the ``default`` one cut to a single ordering, scheme pair and CLE setting, with no replayed
trials, so the one trial runs exactly that pipeline (stopping early only if a stage meets the target). AdaRound
takes ``--iterations``, ``--learning-rate`` (omitted: the default, which follows the iteration count) and
``--batch-size`` (samples per step); ``--seed`` is the study's seed, which AdaRound's mini-batch draws follow
(run a variant with a few seeds before reading a one- or two-image difference on the 128-image EfficientNet eval)::

    flock /tmp/aq_cpu.lock python benchmarks/run_pipeline.py --case effnet --param-bw 4 --output-bw 8 \\
        --ordering 'bnf>cle>scheme>amp>adaround' --scheme mse/tf_enhanced --no-hba --iterations 30 [--learning-rate 1e-3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import optuna
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_search import CASES, EVAL_SIZES  # noqa: E402  (benchmarks/ is not a package)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="effnet", choices=sorted(CASES))
    ap.add_argument("--ordering", default="bnf>cle>scheme>amp>adaround")
    ap.add_argument("--scheme", default="mse/tf_enhanced", help="a scheme candidate of the space, or 'select'")
    ap.add_argument("--no-hba", action="store_true", help="CLE without high-bias absorption")
    ap.add_argument("--param-bw", type=int, default=4)
    ap.add_argument("--output-bw", type=int, default=8)
    ap.add_argument("--per-tensor", action="store_true", help="per-tensor weights (default per-channel)")
    ap.add_argument("--allowed-drop", type=float, default=0.05)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--learning-rate", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=None, help="AdaRound's samples per iteration (omitted: the default)")
    ap.add_argument("--num-batches", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="the study's seed (AdaRound's sampling follows it)")
    ap.add_argument("--cache-dir", default="/tmp/aq_cases")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from _aimet_reference import load_case

    import aq_search
    from aq_search import AdaRoundParams, AutoQuant

    model, dummy, calib, eval_fn, _ = load_case(str(HERE / CASES[args.case][0]), {"cache_dir": args.cache_dir}, [str(HERE)])
    space = aq_search.load_search_space("default").to_dict()
    space.update(orderings=[args.ordering], replay_reference=False, max_trials=1, name="one-pipeline")
    space["cle"] = {"high_bias_absorption": [not args.no_hba], "replace_relu6": ["unclipped"]}
    space["scheme"]["candidates"] = [args.scheme]
    space["amp"]["candidate_sets"] = space["amp"]["candidate_sets"][:1]
    calls = [0]

    def evaluate(m: torch.nn.Module, num_samples: int | None = None) -> float:
        calls[0] += 1
        return float(eval_fn(m, num_samples))

    params = AdaRoundParams(
        num_batches=min(args.num_batches, len(calib)), num_iterations=args.iterations, learning_rate=args.learning_rate,
        **({} if args.batch_size is None else {"batch_size": args.batch_size}),
    )
    with tempfile.TemporaryDirectory() as results_dir:
        aq = AutoQuant(
            model.eval(),
            dummy,
            calib,
            evaluate,
            param_bw=args.param_bw,
            output_bw=args.output_bw,
            results_dir=results_dir,
            search_space=space,
            seed=args.seed,
            per_channel=not args.per_tensor,
            adaround_params=params,
            eval_size=EVAL_SIZES[args.case],
        )
        started = time.perf_counter()
        res = aq.optimize(allowed_accuracy_drop=args.allowed_drop, n_trials=1)
        print(f"result {res.accuracy:.4f} (target {res.target_accuracy:.4f}), {calls[0]} eval calls, "
              f"{time.perf_counter() - started:.1f} s: {res.pipeline}")
        for trial in res.study.trials:
            for s in trial.user_attrs.get("stage_scores") or []:
                score = "-" if s["score"] is None else f"{s['score']:.4f}"
                print(f"  {s['stage']:9} {score:>7}  {s['seconds']:6.1f} s  {s['eval_calls']} call(s)  "
                      f"{s['relative_bops']}x BOPs  {(s['note'] or '')[:120]}")


if __name__ == "__main__":
    main()
