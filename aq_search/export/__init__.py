"""Deployable output: ONNX with QuantizeLinear/DequantizeLinear, encodings, and reloading a search result.

* :func:`export_onnx` writes the QDQ model, the plain FP32 model and encodings keyed by ONNX tensor names,
  and checks the QDQ model in onnxruntime against the sim (:func:`validate_onnx`).
* :func:`load_result` rebuilds the best model of a search from its results folder, bit for bit.
"""

from ._aimet import AIMET_LEGACY_VERSION, AIMET_V1_VERSION, from_aimet_v1, to_aimet_v1
from ._load import RESULT_FILES, SUPPORTED_RESULTS_VERSIONS, LoadedResult, ResultLoadError, load_result
from ._onnx import (
    DEFAULT_OPSET,
    ONNX_ENCODINGS_VERSION,
    OnnxExport,
    OnnxExportError,
    OnnxValidation,
    export_onnx,
    validate_onnx,
)
from ._pt2e import export_pt2e

__all__ = [
    "AIMET_LEGACY_VERSION",
    "AIMET_V1_VERSION",
    "DEFAULT_OPSET",
    "ONNX_ENCODINGS_VERSION",
    "RESULT_FILES",
    "SUPPORTED_RESULTS_VERSIONS",
    "LoadedResult",
    "OnnxExport",
    "OnnxExportError",
    "OnnxValidation",
    "ResultLoadError",
    "export_onnx",
    "export_pt2e",
    "from_aimet_v1",
    "load_result",
    "to_aimet_v1",
    "validate_onnx",
]
