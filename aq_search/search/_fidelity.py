"""Multi-fidelity: screen on a subset, confirm on the full evaluation only what can meet the target.

A score measured on ``n`` samples is an estimate. For a score in ``[0, 1]`` (an accuracy: a fraction of
samples right) its standard error is ``sqrt(s (1 - s) / n)``; the upper confidence bound
``s + z * se`` (``z = 2``, about 97.7% one-sided) decides: a subset score whose bound reaches the
target is confirmed with a full evaluation; one whose bound misses it is not (it cannot plausibly meet
the target). Scores outside ``[0, 1]`` have no such bound; then the margin is the allowed drop (scaled by
``z / 2``).
Every confirmation is a full evaluation, so a trial's value and the target check always rest on full
scores: a subset screen never promotes a model whose full score misses.

A stage that more stages follow is confirmed on a tighter bound, ``z = 1`` (:data:`Z_STAGE`, the target
within one standard error: a chance of meeting it of about 16% or more). Not confirming it loses
nothing: the pipeline goes on from it, and keep-best confirms its subset score at the end if it is still
the best. Confirming it pays one full evaluation for a small chance to stop before the stages after it,
which usually raise the score anyway (AMP, AdaRound).
"""

from __future__ import annotations

import math

__all__ = ["Z", "Z_STAGE", "could_meet", "standard_error", "upper_bound", "worth_confirming"]

#: one-sided z of the confidence bound.
Z = 2.0
#: one-sided z for confirming a stage that more stages follow (see the module docstring).
Z_STAGE = 1.0


def standard_error(p: float, num_samples: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``num_samples`` samples: ``sqrt(p (1 - p) / n)``."""
    return math.sqrt(p * (1.0 - p) / num_samples)


def upper_bound(score: float, num_samples: int | None, fallback_margin: float, z: float = Z) -> float:
    """Upper confidence bound (``z`` standard errors) of a score measured on ``num_samples`` (``None``: exact)."""
    if num_samples is None:
        return score
    if 0.0 <= score <= 1.0 and num_samples > 0:
        # Wilson-style floor on the variance, so a subset scoring 1.0 or 0.0 is not taken as exact
        p = min(max(score, 0.5 / num_samples), 1.0 - 0.5 / num_samples)
        return score + z * standard_error(p, num_samples)
    return score + max(fallback_margin, 0.0) * z / Z


def could_meet(score: float, num_samples: int | None, target: float, fallback_margin: float) -> bool:
    """Whether a subset score's confidence bound reaches ``target`` (then it is worth a full evaluation)."""
    return upper_bound(score, num_samples, fallback_margin) >= target


def worth_confirming(score: float, num_samples: int | None, target: float, fallback_margin: float, last: bool) -> bool:
    """Whether a stage's subset score is worth a full evaluation: its bound reaches ``target`` at ``z = 2``
    for the pipeline's last stage, at ``z = 1`` for a stage that more stages follow."""
    return upper_bound(score, num_samples, fallback_margin, Z if last else Z_STAGE) >= target
