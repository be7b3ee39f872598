"""Benchmark case: the embedded digits model (``aq_search/examples/digits.py``), in the job-case format.

``aq_search/examples/digits.py`` is self-contained (torch, numpy, scikit-learn), so it is loaded here by
file path: the AIMET venv, which does not have aq_search installed, gets the very same MobileNet-style
CNN, weights, calibration batches and evaluation as the aq-search venv.

``build(cache_dir)`` returns ``model``, ``dummy_input``, ``calib_batches`` (8 unlabeled batches of 64
training digits), ``eval_fn(model, num_samples=None)`` (top-1 on the 797 held-out digits), ``name``, ``meta``.
"""

# NOTE: no ``from __future__ import annotations`` (AIMET pickles the traced model; see fashion_mnist.py).

import importlib.util
import os
import sys
from types import ModuleType

_EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "aq_search", "examples", "digits.py")


def _example() -> ModuleType:
    name = "_aq_example_digits"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.abspath(_EXAMPLE))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def build(cache_dir: str, num_batches: int = 8, batch_size: int = 64) -> dict:
    ex = _example()
    case = ex.digits_case(cache_dir, batch_size=batch_size, num_batches=num_batches)
    return {
        "name": "digits_mobilenet",
        "model": case.model,
        "dummy_input": case.dummy_input,
        "calib_batches": list(case.calibration_batches),
        "eval_fn": case.eval_callback,
        "meta": {"n_test": len(case.split.test_x), "n_calib": sum(len(b) for b in case.calibration_batches)},
    }
