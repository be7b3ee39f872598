"""Fake-quantization simulation: model preparation, quantizers, range setting and QuantSim."""

from ._fake_quant import encoding_from_range, int_range, quantize_dequantize, range_from_encoding
from ._ops import Add, Concat, Div, FunctionalOp, MatMul, Mean, Mul, Pad, Sub
from ._prepare import PreparationReport, Problem, is_prepared, prepare_model, validate_model
from ._quantizer import FakeQuantizer
from ._range import (
    QUANT_SCHEMES,
    MinMaxEstimator,
    MseEstimator,
    PercentileEstimator,
    RangeEstimator,
    RangeStats,
    SqnrEstimator,
    make_range_estimator,
)
from ._sim import ENCODINGS_VERSION, QuantizerOverride, QuantSim

__all__ = [
    "ENCODINGS_VERSION",
    "QUANT_SCHEMES",
    "Add",
    "Concat",
    "Div",
    "FakeQuantizer",
    "FunctionalOp",
    "MatMul",
    "Mean",
    "MinMaxEstimator",
    "MseEstimator",
    "Mul",
    "Pad",
    "PercentileEstimator",
    "PreparationReport",
    "Problem",
    "QuantSim",
    "QuantizerOverride",
    "RangeEstimator",
    "RangeStats",
    "SqnrEstimator",
    "Sub",
    "encoding_from_range",
    "int_range",
    "is_prepared",
    "make_range_estimator",
    "prepare_model",
    "quantize_dequantize",
    "range_from_encoding",
    "validate_model",
]
