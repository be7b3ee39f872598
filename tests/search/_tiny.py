"""A tiny AutoQuant case for tests of the search's bookkeeping: an MLP scored against its own FP32 outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from aq_search import AutoQuant
from aq_search.search import load_search_space


def space(**overrides: Any) -> dict[str, Any]:
    """The fast space cut down: two orderings, five scheme pairs, random sampling, no pruning, no reference trial."""
    out = load_search_space("fast").to_dict()
    out.update(
        {
            "orderings": ["bnf>scheme", "bnf>cle>scheme"],
            "sampler": "random",
            "max_trials": 6,
            "replay_reference": False,
            "pruner": {"type": "none"},
        }
    )
    out["scheme"]["candidates"] = ["tf/tf", "tf_enhanced/tf_enhanced", "mse/tf_enhanced", "tf_enhanced/tf", "tf/mse"]
    out["scheme"]["per_channel"] = [True]
    out.update(overrides)
    return out


class Tiny:
    """An MLP scored by top-1 agreement with its own FP32 outputs (a few milliseconds per evaluation)."""

    def __init__(self, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
        self.x = torch.randn(256, 8, generator=g)
        with torch.no_grad():
            self.labels = self.model(self.x).argmax(1)

    def eval_callback(self, model: nn.Module, num_samples: int | None = None) -> float:
        n = num_samples or len(self.x)
        return float((model(self.x[:n]).argmax(1) == self.labels[:n]).float().mean())

    def make(self, tmp_path: Path, **kwargs: Any) -> AutoQuant:
        settings: dict[str, Any] = {
            "param_bw": 4,
            "output_bw": 8,
            "results_dir": tmp_path / "aq",
            "search_space": space(),
            "seed": 0,
            "study_name": "identity",
        }
        settings.update(kwargs)
        batches = [self.x[i : i + 64] for i in range(0, 256, 64)]
        return AutoQuant(self.model, self.x[:1], batches, self.eval_callback, **settings)


