"""The ``aq-search`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ._errors import AQSearchError

__all__ = ["main"]


def _demo_table(results_dir: str) -> int:
    from .examples.digits import digits_case
    from .quantsim import QuantSim

    case = digits_case(results_dir)
    fp32 = case.eval_callback(case.model)
    print(f"digits CNN: FP32 accuracy {fp32:.4f} on {len(case.split.test_x)} held-out digits")
    print(f"{'config':28} {'accuracy':>9} {'drop':>7}")
    for label, kwargs in (
        ("W8A8 per-channel", {"default_param_bw": 8, "default_output_bw": 8, "per_channel": True}),
        ("W8A8 per-tensor", {"default_param_bw": 8, "default_output_bw": 8, "per_channel": False}),
        ("W4A8 per-channel", {"default_param_bw": 4, "default_output_bw": 8, "per_channel": True}),
        ("W4A8 per-tensor", {"default_param_bw": 4, "default_output_bw": 8, "per_channel": False}),
        ("W4A4 per-tensor", {"default_param_bw": 4, "default_output_bw": 4, "per_channel": False}),
    ):
        sim = QuantSim(case.model, case.dummy_input, **kwargs)  # type: ignore[arg-type]
        sim.compute_encodings(case.calibration_batches)
        acc = case.eval_callback(sim.model)
        print(f"{label:28} {acc:9.4f} {fp32 - acc:7.4f}")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aq-search", description="Automatic post-training quantization search.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the embedded default: a digits CNN")
    demo.add_argument("--results-dir", default="aq_results", help="where the trained model and results go")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "demo":
            return _demo_table(args.results_dir)
    except AQSearchError as err:
        print(f"aq-search: error: {err}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
