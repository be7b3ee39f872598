"""Types and constants of the ONNX export: opsets, :class:`OnnxExport`, :class:`OnnxValidation`, and the
optional-dependency checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._errors import OnnxExportError
from ..quantsim import ENCODINGS_VERSION

#: Opset used when every quantizer has 8 bits or fewer.
DEFAULT_OPSET = 17
#: Opset needed for int16/uint16 QuantizeLinear/DequantizeLinear (quantizers of 9..16 bits).
INT16_OPSET = 21
#: Per-channel DequantizeLinear (the ``axis`` attribute) needs opset 13.
MIN_OPSET = 13
#: The highest opset the TorchScript-based exporter writes; higher opsets are reached by conversion.
_TORCHSCRIPT_MAX_OPSET = 20
#: ``version`` of the encodings JSON written next to the FP32 model (keys are ONNX tensor names).
ONNX_ENCODINGS_VERSION = ENCODINGS_VERSION

_MARKER_DOMAIN = "aq_export"
_MARKER_PREFIX = "aq_export_marker_"


# -- results ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OnnxValidation:
    """How the exported QDQ model, run by onnxruntime, agrees with the sim.

    Attributes:
        num_samples: samples compared (the first dimension of the inputs).
        top1_agreement: share of samples (and positions, for dense outputs) whose argmax over dim 1 is the
            same in onnxruntime and in the sim; ``None`` when the outputs have no class dimension.
        max_abs_error / mean_abs_error: over every output element.
        max_abs_output: the largest sim output magnitude (a scale for the errors).
        output_quantum: the scale (step) of the sim's quantizer on the first model output, when it has
            one; ``max_abs_error / output_quantum`` is the worst error in quantization steps.
        exact_fraction: share of output elements that are bit-identical.
        optimization_level: onnxruntime's graph optimization level used (``"all"``, ``"extended"``,
            ``"basic"`` or ``"disabled"``).
        disabled_optimizers: onnxruntime graph transformers that were switched off.
        providers: the onnxruntime execution providers the session used, in priority order.
    """

    num_samples: int
    top1_agreement: float | None
    max_abs_error: float
    mean_abs_error: float
    max_abs_output: float
    output_quantum: float | None
    exact_fraction: float
    optimization_level: str
    disabled_optimizers: tuple[str, ...] = ()
    providers: tuple[str, ...] = ("CPUExecutionProvider",)

    @property
    def max_error_in_quanta(self) -> float | None:
        if self.output_quantum is None or self.output_quantum <= 0:
            return None
        return self.max_abs_error / self.output_quantum

    def __str__(self) -> str:
        agree = "n/a" if self.top1_agreement is None else f"{self.top1_agreement:.4f}"
        quanta = self.max_error_in_quanta
        q = f" ({quanta:.2f} output steps)" if quanta is not None else ""
        off = f", without {', '.join(self.disabled_optimizers)}" if self.disabled_optimizers else ""
        return (
            f"onnxruntime vs sim on {self.num_samples} samples (optimization {self.optimization_level}{off}): "
            f"top-1 agreement {agree}, max abs error {self.max_abs_error:.4g}{q}, mean abs error {self.mean_abs_error:.3g}, "
            f"{100 * self.exact_fraction:.2f}% of outputs identical, max |output| {self.max_abs_output:.4g}"
        )


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the QDQ model (QuantizeLinear/DequantizeLinear around every quantized tensor).
        fp32_path: the plain FP32 model (AdaRounded weights as their quantize-dequantized values).
        encodings_path: the encodings JSON for ``fp32_path``, keyed by its ONNX tensor names.
        opset: the ONNX opset of both models.
        input_names / output_names: the models' graph inputs and outputs.
        tensor_names: sim quantizer name (``"conv1"``, ``"conv1.weight"``, an input name) -> ONNX tensor
            name in ``fp32_path`` and in the encodings file (a model output's encoding is on the output).
        qdq_tensor_names: the same for the QDQ model: the float tensor that is quantized (the input of
            the Clip/QuantizeLinear pattern; its scale and zero point are ``<name>_scale`` and
            ``<name>_zero_point``), and for weights the DequantizeLinear output. They equal :attr:`tensor_names` except for model
            outputs, whose name the DequantizeLinear output carries there.
        num_quantized_weights / num_quantized_activations: Q/DQ patterns written (float16 casts included).
        float_weights: weights the sim leaves in float (quantizer disabled) or casts to float16. Note that
            onnxruntime's ``WeightBiasQuantization`` transformer quantizes such weights to int8 when the
            layer sits between quantized tensors; switch it off where that layer must stay float.
        validation: onnxruntime vs sim figures, when validation ran.
        exporter: the PyTorch ONNX exporter that wrote the graph (``"dynamo"`` or ``"torchscript"``).
    """

    path: str
    fp32_path: str
    encodings_path: str
    opset: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    tensor_names: Mapping[str, str] = field(default_factory=dict)
    qdq_tensor_names: Mapping[str, str] = field(default_factory=dict)
    num_quantized_weights: int = 0
    num_quantized_activations: int = 0
    float_weights: tuple[str, ...] = ()
    validation: OnnxValidation | None = None
    exporter: str = "torchscript"


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError as err:
        raise OnnxExportError(
            "ONNX export needs the 'onnx' package (and 'onnxruntime' for validation). "
            "Install them with: pip install 'aq-search[onnx]'"
        ) from err
    return onnx


def _require_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise OnnxExportError(
            "validating the ONNX model needs 'onnxruntime'. Install it with: pip install 'aq-search[onnx]' "
            "(or pass validate=False to export_onnx)"
        ) from err
    return onnxruntime
