"""ONNX export of a :class:`~aq_search.QuantSim`: a QuantizeLinear/DequantizeLinear model, the plain FP32
model and an encodings file keyed by ONNX tensor names, validated with onnxruntime.

How it works: the sim is copied, its fused activations are put back (:meth:`QuantSim.unfuse_activations`),
and every quantizer is replaced by a *marker*, an identity op that the TorchScript ONNX exporter writes as a
node carrying the quantizer's name. The float graph is exported once with these markers; the markers are
then replaced with the ``onnx`` helper API, by the exact Q/DQ pattern of each quantizer (QDQ model) or
removed (FP32 model). No name guessing: every quantizer lands on the tensor the exporter gave it.

Formats written (see :func:`export_onnx`):

* weights (symmetric, signed grid): the quantized integers as an ``int8`` initializer (``int16`` for 9..16
  bits) plus ``DequantizeLinear`` (``axis`` for per-channel encodings). Bit-widths below 8 use ``int8``
  storage holding only the narrower range (e.g. -8..7 for 4 bits). The integers are read back from the
  sim's own fake-quantized weight, so the dequantized ONNX weights equal the sim's bit for bit (AdaRound
  included).
* activations (asymmetric, unsigned grid): ``QuantizeLinear -> DequantizeLinear`` with ``uint8``
  (``uint16`` for 9..16 bits) zero points. Below 8 bits a ``Clip`` to the representable
  ``[(0 - zp) * scale, (2**b - 1 - zp) * scale]`` comes first, because QuantizeLinear saturates to the
  storage type's range, not to ``b`` bits; with the Clip, onnxruntime reproduces the sim's clamping.
* ``dtype="float"`` quantizers: ``Cast`` to float16 and back (16 bits); nothing for 32 bits.
* int16/uint16 QuantizeLinear/DequantizeLinear need opset 21 (onnxruntime 1.32 runs them); the default
  opset is 17, or 21 when a quantizer has more than 8 bits. The graph is exported at opset <= 20 (the
  TorchScript exporter's limit; torch 2.13 still ships it, and it needs no onnxscript) and converted with
  ``onnx.version_converter`` above that.

Validation (:func:`validate_onnx`) runs the QDQ model in onnxruntime and compares it with the sim. With
onnxruntime's float execution of the Q/DQ graph (optimization level ``"basic"``) the outputs equal the sim's
up to float accumulation order (a few quantization steps deep in a network, the same spread torch itself
shows between batch sizes).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._constraints import parameter_error
from .._data import as_model_args, move_to
from ..quantsim import QuantSim
from ._aimet import AIMET_LEGACY_VERSION, AIMET_V1_VERSION, to_aimet_v1
from ._dynamo import DYNAMO_MIN_OPSET, dynamo_available
from ._int4 import INT4_OPSET, resolve_int4
from ._markers import _check_encodings, _check_sim, _choose_opset, _export_with_markers
from ._onnx_types import (
    _TORCHSCRIPT_MAX_OPSET,
    DEFAULT_OPSET,
    ONNX_ENCODINGS_VERSION,
    OnnxExport,
    OnnxExportError,
    OnnxValidation,
    _require_onnx,
)
from ._rewrite import _build, _finalize, _markers_to_identity, _sim_weights, _topo_check
from ._validate import _device, validate_onnx

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_OPSET",
    "ONNX_ENCODINGS_VERSION",
    "OnnxExport",
    "OnnxExportError",
    "OnnxValidation",
    "export_onnx",
    "validate_onnx",
]


def _save(model: Any, path: Path) -> None:
    onnx = _require_onnx()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if model.ByteSize() > 1_900_000_000:
        onnx.save_model(model, os.fspath(tmp), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save_model(model, os.fspath(tmp))
    os.replace(tmp, path)


def _side_paths(path: Path) -> tuple[Path, Path]:
    stem = path.name[: -len(".onnx")] if path.name.endswith(".onnx") else path.name
    return path.with_name(f"{stem}_fp32.onnx"), path.with_name(f"{stem}_fp32.encodings.json")


def export_onnx(
    sim: QuantSim,
    dummy_input: Any = None,
    path: str | os.PathLike[str] = "model.onnx",
    *,
    opset: int | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_batch: bool = True,
    validate: bool = True,
    validation_inputs: Any = None,
    int4_weights: bool | None = None,
    providers: Sequence[str] | str | None = None,
    encodings_format: str = AIMET_LEGACY_VERSION,
    exporter: str = "auto",
) -> OnnxExport:
    """Write the sim as an ONNX model with QuantizeLinear/DequantizeLinear, plus the FP32 model and encodings.

    Three files are written:

    * ``path`` (e.g. ``model.onnx``): the QDQ model. Weights are stored as their quantized integers
      (``int8``; ``int16`` above 8 bits) with a ``DequantizeLinear`` (per-channel ``axis`` where the sim is
      per channel); each quantized activation gets ``QuantizeLinear -> DequantizeLinear`` (``uint8``;
      ``uint16`` above 8 bits), preceded by a ``Clip`` to the representable range below 8 bits; float16
      quantizers become two ``Cast`` nodes. Every layer keeps its own bit-width.
    * ``<stem>_fp32.onnx``: the same graph in plain float (AdaRounded weights as their quantize-dequantized
      values, so a toolchain that applies the encodings reproduces AdaRound).
    * ``<stem>_fp32.encodings.json``: the sim's encodings (AIMET layout) keyed by the FP32 model's tensor
      names (weights keep their torch names, e.g. ``"features.0.weight"``).

    Args:
        sim: a calibrated :class:`~aq_search.QuantSim` (or one with loaded encodings).
        dummy_input: one batch to trace with; ``None`` uses ``sim.dummy_input``.
        path: where the QDQ model goes; the other two files are written beside it.
        opset: ONNX opset; ``None`` picks 18 (17 with the TorchScript exporter), or 21 when a quantizer has
            more than 8 bits or a weight is written as INT4.
        input_names / output_names: graph input/output names (default: the model's argument names;
            ``"output"`` or ``"output_<i>"``).
        dynamic_batch: make the first dimension of inputs and outputs dynamic.
        validate: run the QDQ model in onnxruntime and compare it with the sim (needs onnxruntime; with
            :func:`validate_onnx`'s defaults, and without onnxruntime's ``WeightBiasQuantization`` when some
            weights stay float, see :attr:`OnnxExport.float_weights`).
        validation_inputs: inputs for that comparison (a batch or a list of batches, see
            :func:`validate_onnx`); default: the dummy input.
        int4_weights: store weights of 4 bits or fewer as ONNX ``INT4``/``UINT4`` (half the bytes of
            an ``int8`` container; needs opset 21). ``None``: whenever such weights exist and ``opset`` is
            ``None`` or >= 21 (the opset then becomes at least 21); ``False``: ``int8`` containers at any
            opset >= 13 (the same integers, so both files compute the same outputs).
        providers: onnxruntime execution providers for the validation (see :func:`validate_onnx`).
        exporter: ``"auto"`` (the default): PyTorch's dynamo-based exporter (``torch.onnx.export(...,
            dynamo=True)``, needs ``onnxscript``; opset 18 or more), falling back to the TorchScript exporter
            when it is missing or fails (logged); ``"dynamo"``: that exporter or an error; ``"torchscript"``:
            the TorchScript exporter (opset <= 20 written, higher opsets by conversion).
        encodings_format: AIMET's encodings layout for ``<stem>_fp32.encodings.json``: ``"0.6.1"`` (tensor
            name -> list of ``{bitwidth, dtype, is_symmetric, max, min, offset, scale}``) or ``"1.0.0"``
            (lists of named entries; see ``aq_search/export/_aimet.py``).

    Returns:
        An :class:`OnnxExport` with the paths, tensor names and validation figures.

    Raises:
        EncodingsNotComputedError: an enabled quantizer has no encoding yet.
        OnnxExportError: the model has an op ONNX cannot express (the message names the module), or
            the ``onnx`` package is missing.

    Example:
        >>> export = aq_search.export_onnx(sim, x, "out/model.onnx")         # doctest: +SKIP
        >>> print(export.validation)                                            # doctest: +SKIP
    """
    sim = _check_sim(sim, "export_onnx")
    _require_onnx()
    if not isinstance(path, (str, os.PathLike)):
        raise parameter_error("path", "export_onnx", "a file path", path)
    if not isinstance(dynamic_batch, bool):
        raise parameter_error("dynamic_batch", "export_onnx", "a bool", dynamic_batch)
    _check_encodings(sim)
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise parameter_error("exporter", "export_onnx", "'auto', 'dynamo' or 'torchscript'", exporter)
    if encodings_format not in (AIMET_LEGACY_VERSION, AIMET_V1_VERSION):
        raise parameter_error(
            "encodings_format",
            "export_onnx",
            f"{AIMET_LEGACY_VERSION!r} or {AIMET_V1_VERSION!r} (AIMET's encodings layouts)",
            encodings_format,
        )
    dummy = sim.dummy_input if dummy_input is None else dummy_input
    as_model_args(dummy)
    dummy = move_to(dummy, _device(sim))
    chosen = _choose_opset(sim, opset)
    int4 = resolve_int4(int4_weights, sim.param_quantizers, opset)
    if int4:
        chosen = max(chosen, INT4_OPSET)
    if opset is None and exporter != "torchscript" and dynamo_available() is None:
        chosen = max(chosen, DYNAMO_MIN_OPSET)  # the dynamo exporter's lowest opset
    out_path = Path(path)
    if out_path.suffix != ".onnx":
        out_path = out_path.with_name(out_path.name + ".onnx")
    fp32_path, enc_path = _side_paths(out_path)

    base, quantizers, ins, outs, used = _export_with_markers(
        sim, dummy, chosen, input_names, output_names, dynamic_batch, exporter
    )
    table = _markers_to_identity(base)
    if used == "dynamo":
        chosen = max(chosen, DYNAMO_MIN_OPSET)  # written at that opset directly
    elif chosen > _TORCHSCRIPT_MAX_OPSET:
        from onnx import version_converter

        try:
            base = version_converter.convert_version(base, chosen)
        except Exception as err:
            raise OnnxExportError(
                f"converting the exported graph from opset {_TORCHSCRIPT_MAX_OPSET} to {chosen} failed: {err}. "
                f"Fix: use opset <= {_TORCHSCRIPT_MAX_OPSET} (needs every quantizer at 8 bits or fewer)."
            ) from err
    weights = _sim_weights(sim)
    qdq_model, qdq_names, _, n_w, n_a = _build(base, table, quantizers, weights, qdq=True, int4=int4)
    fp32_model, tensor_names, encodings, _, _ = _build(base, table, quantizers, weights, qdq=False)
    for m in (qdq_model, fp32_model):
        _topo_check(m)
        m.producer_name = "aq-search"
    if int4:
        qdq_model.ir_version = max(qdq_model.ir_version, 10)  # INT4/UINT4 element types: IR version 10
    qdq_model = _finalize(qdq_model)
    fp32_model = _finalize(fp32_model)
    _save(qdq_model, out_path)
    _save(fp32_model, fp32_path)
    data = {
        "version": ONNX_ENCODINGS_VERSION,
        "onnx_model": fp32_path.name,
        **encodings,
        "quantizer_args": sim.encodings()["quantizer_args"],
    }
    if encodings_format == AIMET_V1_VERSION:
        data = to_aimet_v1(data)
    tmp = enc_path.with_name(enc_path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, enc_path)
    logger.info(
        "exported %s (%d weight and %d activation quantizers, opset %d), %s and %s",
        out_path,
        n_w,
        n_a,
        chosen,
        fp32_path.name,
        enc_path.name,
    )
    float_weights = tuple(name for name, q in sim.param_quantizers.items() if not q.enabled or q.dtype == "float")
    if float_weights:
        logger.warning(
            "weights %s stay float in the ONNX model; onnxruntime's WeightBiasQuantization transformer quantizes float "
            "weights of a Conv/Gemm between quantized tensors to int8. To keep them float, create the session with "
            "disabled_optimizers=['WeightBiasQuantization'].",
            list(float_weights[:8]),
        )
    validation = None
    if validate:
        inputs = validation_inputs if validation_inputs is not None else dummy
        off = ("WeightBiasQuantization",) if float_weights else ()
        validation = validate_onnx(out_path, sim, inputs, disabled_optimizers=off, providers=providers)
        logger.info("%s", validation)
        if validation.top1_agreement is not None and validation.top1_agreement < 0.99:
            logger.warning(
                "the exported ONNX model agrees with the sim on only %.1f%% of top-1 predictions", 100 * validation.top1_agreement
            )
    return OnnxExport(
        path=os.fspath(out_path),
        fp32_path=os.fspath(fp32_path),
        encodings_path=os.fspath(enc_path),
        opset=chosen,
        input_names=tuple(ins),
        output_names=tuple(outs),
        tensor_names=tensor_names,
        qdq_tensor_names=qdq_names,
        num_quantized_weights=n_w,
        num_quantized_activations=n_a,
        float_weights=float_weights,
        validation=validation,
        exporter=used,
    )
