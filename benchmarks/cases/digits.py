"""Benchmark case: a small CNN on scikit-learn's 8x8 ``load_digits`` data.

Self-contained on purpose: it imports only torch, numpy and scikit-learn, so
both the aq-search venv and the separate AIMET reference venv can load it by
file path (``importlib``) and get the very same model and data.

``build(cache_dir)`` returns a dict with:

* ``model``          FP32 ``nn.Module`` in eval mode (trained weights)
* ``dummy_input``    ``torch.Tensor`` of shape (1, 1, 8, 8)
* ``calib_batches``  list of unlabeled float tensors (N, 1, 8, 8) from the train split
* ``eval_fn``        ``eval_fn(model, num_samples=None) -> float``: top-1
                     accuracy in [0, 1] on the test split (first ``num_samples``
                     test samples when given)
* ``name``, ``meta`` descriptive extras

Training is deterministic (seed 0, fixed permutation) and takes a few seconds
on one CPU thread; the trained ``state_dict`` is cached under ``cache_dir`` so
that every process (either venv) evaluates exactly the same weights.
"""

# NOTE: no ``from __future__ import annotations`` here: with postponed
# annotations torch.fx records the forward() annotation as the *string*
# "torch.Tensor", and pickling the traced GraphModule then fails in torch 2.13
# ("'str' object has no attribute '__name__'") -- AIMET AutoQuant pickles the
# prepared model, so its "Prepare Model" stage would die on this case.

import hashlib
import json
import os
import tempfile
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

NAME = "digits_cnn"
SEED = 0
N_TRAIN = 1000  # load_digits has 1797 samples -> 797 test
CALIB_BATCH_SIZE = 64
NUM_CALIB_BATCHES = 8  # 512 unlabeled train images for calibration
TRAIN_CFG = {
    "epochs": 30,
    "batch_size": 50,
    "lr": 3e-3,
    "weight_decay": 1e-4,
    "arch": "c16-bn-relu/c32-bn-relu/maxpool2/c32-bn-relu/avgpool/fc10",
    "version": 1,
}


class DigitsCNN(nn.Module):
    """conv(1->16)+BN+ReLU, conv(16->32)+BN+ReLU, maxpool, conv(32->32)+BN+ReLU, avgpool, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)  # 8x8 -> 4x4
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.relu3 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.pool(x)
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.flatten(self.gap(x))
        return self.fc(x)


def _load_data():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]  # (1797,1,8,8) in [0,1]
    y = digits.target.astype(np.int64)
    perm = np.random.RandomState(SEED).permutation(len(x))
    tr, te = perm[:N_TRAIN], perm[N_TRAIN:]
    return (torch.from_numpy(x[tr]), torch.from_numpy(y[tr]),
            torch.from_numpy(x[te]), torch.from_numpy(y[te]))


def _cfg_hash() -> str:
    blob = json.dumps({"train": TRAIN_CFG, "seed": SEED, "n_train": N_TRAIN}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _train(x_tr: torch.Tensor, y_tr: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(SEED)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=TRAIN_CFG["lr"],
                           weight_decay=TRAIN_CFG["weight_decay"])
    gen = torch.Generator().manual_seed(SEED)
    bs = TRAIN_CFG["batch_size"]
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(TRAIN_CFG["epochs"]):
        order = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(x_tr), bs):
            idx = order[i:i + bs]
            opt.zero_grad()
            loss = loss_fn(model(x_tr[idx]), y_tr[idx])
            loss.backward()
            opt.step()
    model.eval()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _load_or_train(cache_dir: str, x_tr, y_tr) -> dict[str, torch.Tensor]:
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f"{NAME}_{_cfg_hash()}.pt")
    if os.path.exists(path):
        return torch.load(path, map_location="cpu", weights_only=True)
    state = _train(x_tr, y_tr)
    # atomic write: two processes may train concurrently; both produce a valid file
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
    os.close(fd)
    torch.save(state, tmp)
    os.replace(tmp, path)
    return state


def make_eval_fn(x_te: torch.Tensor, y_te: torch.Tensor) -> Callable[..., float]:
    def eval_fn(model: nn.Module, num_samples: int | None = None) -> float:
        n = len(x_te) if num_samples is None else max(1, min(int(num_samples), len(x_te)))
        was_training = model.training
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, n, 256):
                logits = model(x_te[i:min(i + 256, n)])
                correct += int((logits.argmax(dim=1) == y_te[i:min(i + 256, n)]).sum())
        model.train(was_training)
        return correct / n

    return eval_fn


def build(cache_dir: str, num_calib_batches: int = NUM_CALIB_BATCHES,
          calib_batch_size: int = CALIB_BATCH_SIZE) -> dict:
    x_tr, y_tr, x_te, y_te = _load_data()
    model = DigitsCNN()
    model.load_state_dict(_load_or_train(cache_dir, x_tr, y_tr))
    model.eval()
    n_cal = min(num_calib_batches * calib_batch_size, len(x_tr))
    calib: list[torch.Tensor] = [x_tr[i:i + calib_batch_size].clone()
                                 for i in range(0, n_cal, calib_batch_size)]
    return {
        "name": NAME,
        "model": model,
        "dummy_input": torch.zeros(1, 1, 8, 8),
        "calib_batches": calib,
        "eval_fn": make_eval_fn(x_te, y_te),
        "meta": {"n_train": len(x_tr), "n_test": len(x_te), "n_calib": n_cal,
                 "weights": f"{NAME}_{_cfg_hash()}.pt"},
    }


if __name__ == "__main__":  # quick self-check: python benchmarks/cases/digits.py [cache_dir]
    import sys
    import time

    t0 = time.time()
    case = build(sys.argv[1] if len(sys.argv) > 1 else os.path.join(tempfile.gettempdir(), "aq_cases"))
    print(f"{case['name']}: fp32 top-1 = {case['eval_fn'](case['model']):.4f} "
          f"({time.time() - t0:.1f}s, {case['meta']})")
