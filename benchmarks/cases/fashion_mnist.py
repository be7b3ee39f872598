"""Benchmark case: a small MobileNet-style CNN on Fashion-MNIST (Debian's ``dataset-fashion-mnist``).

Self-contained on purpose (torch and numpy only, no aq_search imports) so that the aq-search venv and
the AIMET reference venv load this very file by path and get the same model, data and evaluation.

    apt-get install -y dataset-fashion-mnist      # IDX files under /usr/share/datasets/fashion-mnist/

``build(cache_dir)`` returns a dict with ``model`` (FP32, eval mode), ``dummy_input`` (1, 1, 28, 28),
``calib_batches`` (unlabeled training images), ``eval_fn(model, num_samples=None) -> float`` (top-1 on
the first ``num_samples`` of the 10,000 test images, all when None), ``name`` and ``meta``.

Weights: shipped beside this file (``weights/fashion_mnist_cnn_<config hash>.pt``, a state dict loaded with
``weights_only=True``), so every machine benchmarks the same model: training on another CPU gives another
model. ``build(cache_dir, retrain=True)`` (or a changed ``TRAIN_CFG``, whose hash names the file) trains
instead: 2 epochs of Adam, seed 0, batch 128, one thread (about 30-60 s); the state dict is cached under
``cache_dir`` (written atomically) so every process evaluates the same weights. The shipped weights were
trained so on one thread of an AMD EPYC: FP32 top-1 0.8665 on the 10,000 test images (the model the
BENCHMARKS.md figures were measured on).
"""

# NOTE: no ``from __future__ import annotations``: torch.fx would record forward()'s annotation as a
# string, and AIMET AutoQuant pickles the traced model, which then fails in torch 2.13.

import gzip
import hashlib
import os
import struct
import tempfile
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

NAME = "fashion_mnist_cnn"
DATA_DIR = "/usr/share/datasets/fashion-mnist"
SEED = 0
TRAIN_CFG: dict = {"epochs": 2, "batch_size": 128, "lr": 2e-3, "arch": "fmnist-mbnet-v1", "version": 1}
CALIB_BATCH_SIZE = 64
NUM_CALIB_BATCHES = 8


class FashionCNN(nn.Module):
    """Depthwise-separable blocks with BatchNorm and ReLU6 (about 12k parameters)."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int, k: int, groups: int = 1) -> list:
            return [nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()]

        self.features = nn.Sequential(
            *block(1, 16, 3),
            *block(16, 16, 3, groups=16),
            *block(16, 32, 1),
            nn.MaxPool2d(2),
            *block(32, 32, 3, groups=32),
            *block(32, 64, 1),
            nn.MaxPool2d(2),
            *block(64, 64, 3, groups=64),
            *block(64, 96, 1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(96, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # no postponed annotations here (see the note above)
        return self.fc(self.flatten(self.pool(self.features(x))))


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_data(data_dir: str = DATA_DIR) -> tuple:
    """(x_train, y_train, x_test, y_test): images as float (N, 1, 28, 28) scaled to [0, 1], labels int64."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"{data_dir} not found: install it with `apt-get install -y dataset-fashion-mnist`")

    def images(name: str) -> torch.Tensor:
        return torch.from_numpy(_read_idx(os.path.join(data_dir, name)).astype(np.float32) / 255.0).unsqueeze(1)

    def labels(name: str) -> torch.Tensor:
        return torch.from_numpy(_read_idx(os.path.join(data_dir, name)).astype(np.int64))

    return (
        images("train-images-idx3-ubyte.gz"),
        labels("train-labels-idx1-ubyte.gz"),
        images("t10k-images-idx3-ubyte.gz"),
        labels("t10k-labels-idx1-ubyte.gz"),
    )


def _cfg_hash() -> str:
    return hashlib.sha256(repr(sorted(TRAIN_CFG.items())).encode()).hexdigest()[:12]


def _train(x: torch.Tensor, y: torch.Tensor) -> dict:
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        model = FashionCNN()
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=TRAIN_CFG["lr"])
    loss_fn = nn.CrossEntropyLoss()
    bs = int(TRAIN_CFG["batch_size"])
    model.train()
    for _ in range(int(TRAIN_CFG["epochs"])):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(order), bs):
            idx = order[i : i + bs]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.state_dict()


SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")


def _load_or_train(cache_dir: str, x: torch.Tensor, y: torch.Tensor, retrain: bool = False) -> dict:
    shipped = os.path.join(SHIPPED_DIR, f"{NAME}_{_cfg_hash()}.pt")
    if not retrain and os.path.exists(shipped):
        return torch.load(shipped, map_location="cpu", weights_only=True)
    path = os.path.join(cache_dir, f"{NAME}_{_cfg_hash()}.pt")
    if os.path.exists(path):
        return torch.load(path, weights_only=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same weights whatever the thread count (on one CPU model)
    try:
        state = _train(x, y)
    finally:
        torch.set_num_threads(threads)
    os.makedirs(cache_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
    os.close(fd)
    torch.save(state, tmp)
    os.replace(tmp, path)
    return state


def make_eval_fn(x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> Callable:
    def eval_fn(model: nn.Module, num_samples: "int | None" = None) -> float:
        xs, ys = (x, y) if num_samples is None else (x[:num_samples], y[:num_samples])
        training = model.training
        model.eval()
        correct = 0
        try:
            with torch.no_grad():
                for i in range(0, len(xs), batch_size):
                    correct += int((model(xs[i : i + batch_size]).argmax(1) == ys[i : i + batch_size]).sum())
        finally:
            model.train(training)
        return correct / max(1, len(xs))

    return eval_fn


def build(
    cache_dir: str, num_calib_batches: int = NUM_CALIB_BATCHES, calib_batch_size: int = CALIB_BATCH_SIZE, retrain: bool = False
) -> dict:
    x_tr, y_tr, x_te, y_te = load_data()
    model = FashionCNN()
    model.load_state_dict(_load_or_train(cache_dir, x_tr, y_tr, retrain))
    model.eval()
    # calibration: a fixed random subset of the training images (unlabeled)
    idx = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(1))[: num_calib_batches * calib_batch_size]
    calib = [x_tr[idx[i : i + calib_batch_size]].clone() for i in range(0, len(idx), calib_batch_size)]
    return {
        "name": NAME,
        "model": model,
        "dummy_input": torch.zeros(1, 1, 28, 28),
        "calib_batches": calib,
        "eval_fn": make_eval_fn(x_te, y_te),
        "meta": {"n_train": len(x_tr), "n_test": len(x_te), "n_calib": len(idx), "weights": f"{NAME}_{_cfg_hash()}.pt"},
    }


if __name__ == "__main__":  # python benchmarks/cases/fashion_mnist.py [cache_dir]
    import sys
    import time

    t0 = time.time()
    case = build(sys.argv[1] if len(sys.argv) > 1 else os.path.join(tempfile.gettempdir(), "aq_cases"))
    print(f"{case['name']}: fp32 top-1 = {case['eval_fn'](case['model']):.4f} ({time.time() - t0:.1f}s, {case['meta']})")
