"""The embedded default case: a small CNN trained on scikit-learn's bundled digits.

The trained weights ship with the package (``digits_cnn.pt`` beside this file, a 28 KB state dict
loaded with ``torch.load(weights_only=True)``), so the demo, the tests, the notebooks and the
benchmarks use one and the same model on every machine: training gives a different model on a
different CPU (other SIMD reductions), and a model trained at test time makes every measured effect
depend on the machine. ``digits_case(retrain=True)`` (``aq-search demo --retrain``) trains afresh.

Self-contained on purpose (torch, numpy and scikit-learn only, no aq_search imports) so that the
reference benchmark can load this file by path in AIMET's own environment and use the very same
model, data and evaluation. (No ``from __future__ import annotations``: AIMET's model preparation
pickles the traced model, which fails on string annotations.)
"""

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "SHIPPED_WEIGHTS",
    "DigitsCNN",
    "DigitsCase",
    "build_task",
    "digits_case",
    "load_digits_cnn",
    "load_digits_split",
    "train_digits_cnn",
]

_ARCH_VERSION = "digits-mobilenet-v3"

SHIPPED_WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_cnn.pt")
"""The shipped state dict: ``train_digits_cnn(seed=0, epochs=40)`` on one thread of an AMD EPYC.

Measured on it (797 held-out digits, split seed 0): FP32 top-1 0.9862; BatchNorm folded, W4A8
per-tensor min-max ("tf") 0.7516, plus CLE 0.8105; W4A8 per-channel 0.9222.
"""


class DigitsCNN(nn.Module):
    """A MobileNet-style network for 8x8 digits: depthwise-separable blocks with BatchNorm and ReLU6.

    Small (about 4k parameters) and quick to train, yet hard to quantize the way real mobile
    networks are: after BatchNorm folding its depthwise convs have very different ranges per
    channel, so naive W4A8 per-tensor quantization collapses.
    """

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int, k: int, groups: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()]

        self.features = nn.Sequential(
            *block(1, 16, 3),
            *block(16, 16, 3, groups=16),
            *block(16, 32, 1),
            nn.AvgPool2d(2),
            *block(32, 32, 3, groups=32),
            *block(32, 64, 1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


@dataclass(frozen=True)
class DigitsSplit:
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


def load_digits_split(seed: int = 0, n_train: int = 1000) -> DigitsSplit:
    """Digits as (N, 1, 8, 8) float tensors scaled to [0, 1], split by a fixed permutation."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.from_numpy(np.random.RandomState(seed).permutation(len(x)))
    x, y = x[perm], y[perm]
    return DigitsSplit(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def train_digits_cnn(cache_dir: str | os.PathLike[str] | None = None, seed: int = 0, epochs: int = 40) -> DigitsCNN:
    """Train (or load from ``cache_dir``) the digits CNN; deterministic for a seed. Returns it in eval mode."""
    split = load_digits_split(seed)
    model = DigitsCNN()
    path = None
    if cache_dir is not None:
        key = hashlib.sha256(f"{_ARCH_VERSION}-{seed}-{epochs}".encode()).hexdigest()[:12]
        path = os.path.join(os.fspath(cache_dir), f"digits_cnn_{key}.pt")
        if os.path.exists(path):
            model.load_state_dict(torch.load(path, weights_only=True))
            return model.eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same weights whatever the machine's thread count (reductions differ)
    try:
        for _ in range(epochs):
            order = torch.randperm(len(split.train_x), generator=gen)
            for i in range(0, len(order), 64):
                idx = order[i : i + 64]
                opt.zero_grad()
                loss = loss_fn(model(split.train_x[idx]), split.train_y[idx])
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    if path is not None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp"
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    return model


def load_digits_cnn(path: str | os.PathLike[str] = SHIPPED_WEIGHTS) -> DigitsCNN:
    """The digits CNN with the shipped weights (or a state dict at ``path``), in eval mode."""
    model = DigitsCNN()
    model.load_state_dict(torch.load(os.fspath(path), map_location="cpu", weights_only=True))
    return model.eval()


def accuracy(model: nn.Module, x: Tensor, y: Tensor, num_samples: int | None = None, batch_size: int = 256) -> float:
    """Top-1 accuracy on the first ``num_samples`` examples (all when None)."""
    if num_samples is not None:
        x, y = x[:num_samples], y[:num_samples]
    training = model.training
    model.eval()
    correct = 0
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    finally:
        model.train(training)
    return correct / max(1, len(x))


@dataclass(frozen=True)
class DigitsCase:
    """Everything a quantization run needs: model, dummy input, unlabeled calibration batches, eval."""

    model: DigitsCNN
    dummy_input: Tensor
    calibration_batches: list[Tensor]
    split: DigitsSplit

    def eval_callback(self, model: nn.Module, num_samples: int | None = None) -> float:
        return accuracy(model, self.split.test_x, self.split.test_y, num_samples)

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``aq_search.AutoQuant``."""
        return {
            "model": self.model,
            "dummy_input": self.dummy_input,
            "data_loader": self.calibration_batches,
            "eval_callback": self.eval_callback,
        }


def digits_case(
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    batch_size: int = 64,
    num_batches: int = 8,
    *,
    retrain: bool = False,
) -> DigitsCase:
    """The digits CNN with its data: calibration batches come from the training split, unlabeled.

    Args:
        cache_dir: where a retrained model is cached (unused with the shipped weights).
        seed: the train/test split's permutation (and the training seed when retraining). The shipped
            weights were trained on split 0, so another seed retrains (they have seen its test digits).
        batch_size: calibration batch size.
        num_batches: number of calibration batches.
        retrain: train the model here instead of loading the shipped weights.
    """
    model = train_digits_cnn(cache_dir, seed) if retrain or seed != 0 else load_digits_cnn()
    split = load_digits_split(seed)
    batches = [split.train_x[i : i + batch_size] for i in range(0, min(len(split.train_x), batch_size * num_batches), batch_size)]
    return DigitsCase(model, split.train_x[:1].clone(), batches, split)


def build_task() -> dict[str, Any]:
    """The digits case as an ``aq-search`` task: ``aq-search run aq_search.examples.digits:build_task``.

    W4A8 (naive quantization misses a 1% drop), the default search space, seed 0, the shipped
    weights: every worker that rebuilds the task gets the same model (the study refuses a different one).
    """
    case = digits_case()
    return {**case.as_kwargs(), "param_bw": 4, "output_bw": 8, "search_space": "default", "seed": 0}
