"""A small untrained conv/BN model and an eval callback that returns scripted scores.

Keep-best, budget and cost tests assert on what the search does with the scores it is given, so the
scores are scripted (no training, no effect size that depends on the machine).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def batches(n: int = 4, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, 8, 8, generator=g) for _ in range(n)]


class Scripted:
    """``eval_callback(model, num_samples)`` returning ``scores`` in call order, then ``rest``.

    ``by_model`` (optional) decides the score from the model instead, for calls after the script.
    """

    def __init__(
        self, scores: Sequence[float], rest: float = 0.0, by_model: Callable[[nn.Module, int | None], float] | None = None
    ) -> None:
        self.scores = list(scores)
        self.rest = rest
        self.by_model = by_model
        self.calls: list[int | None] = []

    def __call__(self, model: nn.Module, num_samples: int | None = None) -> float:
        self.calls.append(num_samples)
        i = len(self.calls) - 1
        if i < len(self.scores):
            return self.scores[i]
        return self.by_model(model, num_samples) if self.by_model is not None else self.rest
