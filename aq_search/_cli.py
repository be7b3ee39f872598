"""The ``aq-search`` command line."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from ._cli_study import add_study_commands, run_study_command
from ._errors import AQSearchError

__all__ = ["main"]


def _demo(results_dir: str, space: str, allowed_drop: float, n_trials: int | None, seed: int, retrain: bool = False) -> int:
    """The embedded default: the full search on the digits CNN (shipped weights, or retrained) at W4A8."""
    import time

    from .examples.digits import digits_case
    from .search import AutoQuant

    case = digits_case(results_dir, retrain=retrain)
    aq = AutoQuant(
        case.model,
        case.dummy_input,
        case.calibration_batches,
        case.eval_callback,
        param_bw=4,
        output_bw=8,
        results_dir=results_dir,
        search_space=space,
        study_name="aq-search-demo",
        seed=seed,
    )
    fp32 = case.eval_callback(case.model)
    origin = "retrained here" if retrain else "shipped weights"
    print(f"aq-search demo: a MobileNet-style CNN trained on scikit-learn's digits ({origin}), quantized to W4A8")
    print(f"  FP32 accuracy                          {fp32:.4f}  ({len(case.split.test_x)} held-out digits)")
    print(f"  target (allowed drop {allowed_drop:g})             {fp32 - allowed_drop:.4f}")
    _, before = aq.run_inference()
    verdict = "meets" if before >= fp32 - allowed_drop else "misses"
    print(f"  before search (BN folded, tf_enhanced) {before:.4f}  ({verdict} the target)")
    start = time.perf_counter()
    result = aq.optimize(allowed_accuracy_drop=allowed_drop, n_trials=n_trials)
    elapsed = time.perf_counter() - start
    met = "target met" if result.target_met else "target NOT met"
    print(f"  after search                           {result.accuracy:.4f}  ({met})")
    print(f"  best pipeline: {result.pipeline}")
    print(f"  trials: {result.n_trials}, eval calls: {result.n_eval_calls}, search time: {elapsed:.1f} s")
    print(f"  {result.message}")
    print(f"  results: {result.results_dir}/best/ (model_state.pt, pipeline.yaml, encodings.json, summary.json)")
    storage = f"sqlite:///{os.path.abspath(os.path.join(results_dir, 'study.db'))}"
    print(f"  watch the study: optuna-dashboard {storage}")
    print(f"  or: aq-search dashboard {results_dir}   (with artifacts); report: {os.path.join(results_dir, 'report.html')}")
    return 0 if result.target_met else 1


def _dashboard(results_dir: str, host: str, port: int, storage: str | None) -> int:
    """optuna-dashboard on the study in ``results_dir`` with its artifacts (loopback unless told otherwise)."""
    from .viz import make_dashboard_server

    try:
        server = make_dashboard_server(results_dir, host, port, storage=storage)
    except ImportError as err:
        print(f"aq-search: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"aq-search: error: cannot listen on {host}:{port}: {err}", file=sys.stderr)
        return 2
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host}: anyone who can reach it can edit and delete studies in this storage", file=sys.stderr)
    print(f"aq-search dashboard: {server.url}  (storage {server.storage}; Ctrl-C stops it)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aq-search", description="Automatic post-training quantization search.")
    from ._version import __version__

    parser.add_argument("--version", action="version", version=f"aq-search {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the embedded default: the search on a digits CNN at W4A8")
    demo.add_argument("--results-dir", default="aq_results", help="where the trained model, study and results go")
    demo.add_argument("--space", default="default", help="search space: default, fast, thorough or a YAML path")
    demo.add_argument("--allowed-drop", type=float, default=0.01, help="tolerated accuracy drop (default 0.01)")
    demo.add_argument("--n-trials", type=int, default=None, help="trials to run (default: the space's max_trials)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--retrain", action="store_true", help="train the CNN here (cached in RESULTS_DIR) instead of using the shipped weights"
    )
    add_study_commands(sub)
    dash = sub.add_parser("dashboard", help="open a results folder's study in optuna-dashboard (trials, artifacts, note)")
    dash.add_argument("results_dir", metavar="RESULTS_DIR", help="the folder given to AutoQuant(results_dir=...)")
    dash.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    dash.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    dash.add_argument("--storage", default=None, help="study storage URL (default: RESULTS_DIR/study.db or best/summary.json's)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "demo":
            return _demo(args.results_dir, args.space, args.allowed_drop, args.n_trials, args.seed, args.retrain)
        if args.command == "dashboard":
            return _dashboard(args.results_dir, args.host, args.port, args.storage)
        if args.command in ("run", "worker"):
            return run_study_command(args)
    except AQSearchError as err:
        print(f"aq-search: error: {err}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
