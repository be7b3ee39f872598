"""aq-search: automatic post-training quantization as an Optuna search.

* :class:`AutoQuant`: the search (AIMET's recipe as the first trial, then orderings, schemes,
  AdaRound and mixed-precision settings tuned by Optuna; stops at the target).
* :class:`QuantSim`, :func:`prepare_model`, :func:`validate_model`: fake-quantization simulation.
* Techniques: :func:`fold_all_batch_norms`, :func:`equalize_model`, :func:`apply_adaround`,
  :func:`correct_bias`, :func:`choose_mixed_precision`.
* Deployment: :func:`export_onnx`, :func:`validate_onnx`, :func:`load_result`; targets
  (``AutoQuant(target="tensorrt")``, :func:`check_onnx`, :mod:`aq_search.targets`).

The library logs through ``logging.getLogger("aq_search")`` and adds no handlers.
"""

from __future__ import annotations

import logging

from . import viz  # noqa: F401 - attaches the dashboard records and the report to every search (see search._observers)
from ._errors import (
    AQSearchError,
    CalibrationError,
    EncodingsNotComputedError,
    EvalCallbackError,
    InvalidInputError,
    ModelPreparationError,
    SearchSpaceError,
    StudyMismatchError,
)
from ._version import __version__
from .amp import (
    MixedPrecisionConfig,
    MixedPrecisionResult,
    apply_mixed_precision,
    choose_mixed_precision,
    find_quantizer_groups,
    parse_candidates,
    plot_pareto,
    set_mixed_precision,
)
from .export import (
    LoadedResult,
    OnnxExport,
    OnnxExportError,
    OnnxValidation,
    ResultLoadError,
    export_onnx,
    load_result,
    validate_onnx,
)
from .quantsim import (
    QUANT_SCHEMES,
    FakeQuantizer,
    PreparationReport,
    QuantizerOverride,
    QuantSim,
    prepare_model,
    validate_model,
)
from .search import AutoQuant, AutoQuantResult, Pipeline, SearchSpace, load_search_space
from .targets import TargetCheck, TargetProfile, check_onnx
from .techniques import (
    AdaRoundCache,
    AdaRoundParams,
    BatchNormFoldConfig,
    BiasCorrectionConfig,
    CLEConfig,
    apply_adaround,
    correct_bias,
    equalize_model,
    fold_all_batch_norms,
)

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "QUANT_SCHEMES",
    "AQSearchError",
    "AdaRoundCache",
    "AdaRoundParams",
    "AutoQuant",
    "AutoQuantResult",
    "BatchNormFoldConfig",
    "BiasCorrectionConfig",
    "CLEConfig",
    "CalibrationError",
    "EncodingsNotComputedError",
    "EvalCallbackError",
    "FakeQuantizer",
    "InvalidInputError",
    "LoadedResult",
    "MixedPrecisionConfig",
    "MixedPrecisionResult",
    "ModelPreparationError",
    "OnnxExport",
    "OnnxExportError",
    "OnnxValidation",
    "Pipeline",
    "PreparationReport",
    "QuantSim",
    "QuantizerOverride",
    "ResultLoadError",
    "SearchSpace",
    "SearchSpaceError",
    "StudyMismatchError",
    "TargetCheck",
    "TargetProfile",
    "__version__",
    "apply_adaround",
    "apply_mixed_precision",
    "check_onnx",
    "choose_mixed_precision",
    "correct_bias",
    "equalize_model",
    "export_onnx",
    "find_quantizer_groups",
    "fold_all_batch_norms",
    "load_result",
    "load_search_space",
    "parse_candidates",
    "plot_pareto",
    "prepare_model",
    "set_mixed_precision",
    "validate_model",
    "validate_onnx",
]
