"""How much a study spends per decision: subsets as large as the evaluation are full evaluations.

A subset score is screened with a confidence bound and confirmed with a full evaluation when the bound
reaches the target (see :mod:`._fidelity`). When the user's evaluation holds no more samples than the
subset (``eval_size <= intermediate_num_samples``) the "subset" call already is the full evaluation:
treating it as a subset would confirm it with a second, identical call. :func:`subset_or_full` turns
such a subset size into ``None`` (full), so the first call's score is final.
"""

from __future__ import annotations

__all__ = ["subset_or_full"]


def subset_or_full(num_samples: int | None, eval_size: int | None) -> int | None:
    """``num_samples``, or ``None`` (the full evaluation) when the evaluation has no more samples than that."""
    if num_samples is None or eval_size is None:
        return num_samples
    return None if num_samples >= eval_size else num_samples
