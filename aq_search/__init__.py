"""aq-search: automatic post-training quantization as an Optuna search.

Public API (see README.md):

* :class:`QuantSim`, :func:`prepare_model`, :func:`validate_model`: fake-quantization simulation.
"""

from __future__ import annotations

import logging

from ._errors import (
    AQSearchError,
    CalibrationError,
    EncodingsNotComputedError,
    EvalCallbackError,
    InvalidInputError,
    ModelPreparationError,
    SearchSpaceError,
)
from ._version import __version__
from .quantsim import (
    QUANT_SCHEMES,
    FakeQuantizer,
    PreparationReport,
    QuantizerOverride,
    QuantSim,
    prepare_model,
    validate_model,
)

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "QUANT_SCHEMES",
    "AQSearchError",
    "CalibrationError",
    "EncodingsNotComputedError",
    "EvalCallbackError",
    "FakeQuantizer",
    "InvalidInputError",
    "ModelPreparationError",
    "PreparationReport",
    "QuantSim",
    "QuantizerOverride",
    "SearchSpaceError",
    "__version__",
    "prepare_model",
    "validate_model",
]
