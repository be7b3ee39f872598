"""The greedy front against exhaustive search on the digits CNN (6 groups), with real accuracy.

Run with ``-s`` to see the gap tables. Each exhaustive run evaluates every config (2 candidates:
64, 3 candidates: 729) on the 797 test digits.
"""

from __future__ import annotations

from typing import Any

import pytest
from torch import nn

from aq_search.amp import choose_mixed_precision, exhaustive_search, front_gap
from aq_search.examples.digits import DigitsCase

from .conftest import digits_sim


def gap_report(
    digits: DigitsCase, folded: nn.Module, candidates: list[str], *, per_channel: bool, drop: float = 0.01, refine_evals: int = 10
) -> dict[str, Any]:
    """Greedy (linear front, binary search, binary + refinement) against every config; printed and returned."""
    fp32 = digits.eval_callback(folded)
    target = fp32 - drop
    sim = digits_sim(digits, folded, per_channel=per_channel)
    exhaustive = exhaustive_search(sim, candidates, digits.eval_callback, progress=False)
    kwargs: dict[str, Any] = {"fp32_accuracy": fp32, "progress": False}
    linear = choose_mixed_precision(sim, candidates, digits.eval_callback, drop, phase2_search="linear", **kwargs)
    binary = choose_mixed_precision(sim, candidates, digits.eval_callback, drop, **kwargs)
    refined = choose_mixed_precision(sim, candidates, digits.eval_callback, drop, refine_evals=refine_evals, **kwargs)
    gaps = front_gap(linear.pareto, exhaustive)
    meeting = [e for e in exhaustive if e.accuracy >= target]
    best = min(meeting, key=lambda e: (e.relative_cost, -e.accuracy))
    report = {
        "setting": f"digits, BN folded, min-max, {'per-channel' if per_channel else 'per-tensor'}, {candidates}, drop {drop}",
        "configs": len(exhaustive),
        "max_gap": max(g.gap for g in gaps),
        "mean_gap": sum(g.gap for g in gaps) / len(gaps),
        "gaps": gaps,
        "exhaustive_best_cost": best.relative_cost,
        "exhaustive_best_accuracy": best.accuracy,
        "binary": (binary.relative_bops, binary.accuracy, binary.n_eval_calls),
        "refined": (refined.relative_bops, refined.accuracy, refined.n_eval_calls),
        "linear": (linear.relative_bops, linear.accuracy, linear.n_eval_calls),
    }
    print(f"\n{report['setting']}: {len(exhaustive)} configs, FP32 {fp32:.4f}, target {target:.4f}")
    print("  greedy front (linear search) vs the best config of at most that cost:")
    for g in gaps:
        line = f"cost {g.relative_cost:.3f}: greedy {g.greedy_accuracy:.4f}, exhaustive {g.best_accuracy:.4f}, gap {g.gap:+.4f}"
        print(f"    {line}")
    print(f"  max gap {report['max_gap']:.4f}, mean gap {report['mean_gap']:.4f}")
    print(f"  cheapest config meeting the target: exhaustive {best.relative_cost:.3f} BOPs (accuracy {best.accuracy:.4f})")
    for name in ("binary", "refined", "linear"):
        bops, acc, calls = report[name]
        print(f"  greedy {name:8}: {bops:.3f} BOPs, accuracy {acc:.4f}, {calls} eval calls")
    return report


def test_greedy_front_is_close_to_exhaustive_at_w4a8(digits: DigitsCase, folded_digits: nn.Module) -> None:
    report = gap_report(digits, folded_digits, ["w8a8", "w4a8"], per_channel=True)
    assert report["configs"] == 64
    assert report["max_gap"] <= 0.01
    bops, acc, calls = report["binary"]
    assert acc >= report["exhaustive_best_accuracy"] - 0.01 or bops <= report["exhaustive_best_cost"] + 1e-9
    assert bops <= report["exhaustive_best_cost"] + 0.05  # the greedy choice costs at most 5% more BOPs than the optimum
    assert calls <= 16  # against 64 for the exhaustive search


@pytest.mark.slow
@pytest.mark.parametrize(
    ("candidates", "per_channel"),
    [(["w8a8", "w4a4"], True), (["w8a8", "w2a8"], False), (["w8a8", "w4a8", "w2a8"], True), (["w8a8", "w4a8", "w2a8"], False)],
)
def test_greedy_against_exhaustive_harder_settings(
    digits: DigitsCase, folded_digits: nn.Module, candidates: list[str], per_channel: bool
) -> None:
    report = gap_report(digits, folded_digits, candidates, per_channel=per_channel)
    # the refinement never ends more expensive than the plain binary search
    assert report["refined"][0] <= report["binary"][0] + 1e-9
    assert report["exhaustive_best_cost"] <= report["refined"][0] + 1e-9
