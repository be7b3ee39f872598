"""Cost records of a study: what each trial and stage spent, and the totals for the summary."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["eval_equivalents", "study_costs"]


def eval_equivalents(num_samples: int | None, eval_size: int | None) -> float:
    """One eval call in full-evaluation units: ``num_samples / eval_size``; a full evaluation is 1.

    Without ``eval_size`` a subset call counts 1 as well (an upper bound: its true share is unknown).
    """
    if num_samples is None or not eval_size:
        return 1.0
    return min(num_samples, eval_size) / eval_size


def study_costs(trials: Iterable[Any], fp32: Mapping[str, Any]) -> dict[str, Any]:
    """Totals over ``trials`` (their user attributes) plus the FP32 evaluation(s) in ``fp32``.

    Returns ``{"eval_calls", "eval_samples", "eval_equivalents", "seconds", "by_stage": {key: {...}}}``;
    ``by_stage`` sums each technique's stages (seconds, calls, eval-equivalents, stages run, stages
    whose score came from the study).
    """
    calls = int(fp32.get("fp32_eval_calls", 1))
    equivalents = float(fp32.get("fp32_eval_equivalents", calls))
    samples = 0
    seconds = 0.0
    by_stage: dict[str, dict[str, float]] = {}
    for t in trials:
        a = t.user_attrs
        calls += int(a.get("eval_calls", 0) or 0)
        samples += int(a.get("eval_samples", 0) or 0)
        equivalents += float(a.get("eval_equivalents", 0.0) or 0.0)
        seconds += float(a.get("wall_seconds", 0.0) or 0.0)
        for s in a.get("stage_scores", []) or []:
            if not isinstance(s, Mapping):
                continue
            row = by_stage.setdefault(
                str(s.get("stage", "?")), {"stages": 0, "from_study": 0, "seconds": 0.0, "eval_calls": 0, "eval_equivalents": 0.0}
            )
            row["stages"] += 1
            row["from_study"] += 1 if s.get("from_study") else 0
            row["seconds"] = round(row["seconds"] + float(s.get("seconds", 0.0) or 0.0), 3)
            row["eval_calls"] += int(s.get("eval_calls", 0) or 0)
            row["eval_equivalents"] = round(row["eval_equivalents"] + float(s.get("eval_equivalents", 0.0) or 0.0), 6)
    return {
        "eval_calls": calls,
        "eval_samples": samples,
        "eval_equivalents": round(equivalents, 6),
        "seconds": round(seconds, 3),
        "by_stage": by_stage,
    }
