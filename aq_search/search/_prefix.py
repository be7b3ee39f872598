"""Scores already in the study: a pipeline prefix scored once is never evaluated again.

Each stage of a trial is recorded with a *prefix key*: a hash of the stages up to and including it
(technique keys and configs) and of the settings that change what they produce (default scheme,
per-channel, bit-widths, seed, evaluation fidelity). A later trial with the same prefix (TPE
re-proposes parameters; orderings share prefixes) takes that stage's score, and what the stage chose
(the scheme pair a selection kept, the bit-widths AMP chose), from the study instead of calling the
eval callback again. The stage itself is still applied (its model comes from the stage caches).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KnownScores", "prefix_keys"]

PREFIX_ATTR = "prefix_keys"
STAGES_ATTR = "stage_scores"


def prefix_keys(stages: Sequence[Any], context: Mapping[str, Any]) -> list[str]:
    """One key per stage: the hash of ``context`` and every stage up to it (``Stage.key`` + config)."""
    keys = []
    parts: list[Any] = [dict(sorted(context.items()))]
    for stage in stages:
        parts.append([stage.key, type(stage.config).__name__, stage.config.to_dict()])
        text = json.dumps(parts, sort_keys=True, default=str)
        keys.append(hashlib.sha256(text.encode()).hexdigest()[:24])
    return keys


@dataclass
class KnownScores:
    """``{prefix key: stage record}`` from the study's finished trials (complete or pruned)."""

    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_trials(cls, trials: Iterable[Any]) -> KnownScores:
        out: dict[str, dict[str, Any]] = {}
        for t in trials:
            if not t.state.is_finished():
                continue
            keys = t.user_attrs.get(PREFIX_ATTR)
            stages = t.user_attrs.get(STAGES_ATTR)
            if not isinstance(keys, list) or not isinstance(stages, list):
                continue
            for key, record in zip(keys, stages, strict=False):
                if not isinstance(record, Mapping) or key in out:
                    continue
                score = record.get("score")
                if isinstance(score, (int, float)) and math.isfinite(score):
                    out[str(key)] = dict(record)
        return cls(out)

    def get(self, key: str, num_samples: int | None) -> dict[str, Any] | None:
        """The record of ``key`` when it was scored at this fidelity or in full; else ``None``."""
        record = self.records.get(key)
        if record is None:
            return None
        if record.get("num_samples") is None or record.get("num_samples") == num_samples:
            return record
        return None

    def add(self, key: str, record: Mapping[str, Any]) -> None:
        self.records.setdefault(key, dict(record))
