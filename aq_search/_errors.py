"""Exceptions raised by aq-search.

Every error a user can cause derives from :class:`AQSearchError`; the message names the problem and
how to fix it.
"""

from __future__ import annotations

__all__ = [
    "AQSearchError",
    "CalibrationError",
    "EncodingsNotComputedError",
    "EvalCallbackError",
    "InvalidInputError",
    "ModelPreparationError",
    "OnnxExportError",
    "ResultLoadError",
    "SearchSpaceError",
    "StudyMismatchError",
]


class AQSearchError(Exception):
    """Base class of the errors aq-search raises on purpose."""


class InvalidInputError(AQSearchError, ValueError):
    """An argument has the wrong type or value."""


class ModelPreparationError(AQSearchError):
    """The model cannot be traced or prepared for quantization."""


class CalibrationError(AQSearchError):
    """Calibration (``compute_encodings``) failed or saw no data."""


class EncodingsNotComputedError(AQSearchError, RuntimeError):
    """The quantized model was run before its encodings were computed or loaded."""


class EvalCallbackError(AQSearchError):
    """The user's evaluation callback raised or returned something that is not a number."""


class SearchSpaceError(AQSearchError, ValueError):
    """A search space file or dict is invalid."""


class StudyMismatchError(InvalidInputError):
    """A study being resumed or joined was run with other settings (the message names each one)."""


class OnnxExportError(AQSearchError):
    """The model cannot be written as ONNX (an op ONNX cannot express, a missing package ...)."""


class ResultLoadError(AQSearchError, ValueError):
    """A results folder cannot be loaded: files missing, an incompatible version, or another model."""
