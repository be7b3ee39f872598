"""Validation of an exported QDQ model: onnxruntime against the sim (:func:`validate_onnx`)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import Tensor
from torch.utils import _pytree as pytree

from .._constraints import parameter_error
from .._data import as_model_args, move_to
from .._errors import InvalidInputError
from ..quantsim import QuantSim
from ._markers import _check_sim
from ._onnx_types import OnnxValidation, _require_ort
from ._providers import resolve_providers

# -- validation -----------------------------------------------------------------------------------------

_LEVELS = ("all", "extended", "basic", "disabled")


def _batches(inputs: Any) -> list[Any]:
    if isinstance(inputs, list):
        if not inputs:
            raise InvalidInputError("validate_onnx: 'inputs' is an empty list; pass a batch or a list of batches.")
        return inputs
    if isinstance(inputs, Iterable) and not isinstance(inputs, (Tensor, tuple, Mapping, str, bytes)):
        return list(inputs)
    return [inputs]


def _device(sim: QuantSim) -> torch.device:
    first = next(iter(sim.model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _output_quantum(sim: QuantSim) -> float | None:
    out = next((n for n in sim.model.graph.nodes if n.op == "output"), None)
    if out is None:
        return None
    first = next((a for a in pytree.tree_leaves(out.args) if isinstance(a, fx.Node)), None)
    name = first.meta.get("aq_quantizer") if first is not None else None
    if name is None:
        return None
    q = sim.activation_quantizers[name]
    if not q.enabled or q.dtype != "int" or q.scale is None:
        return None
    return float(q.scale.reshape(-1)[0])


def validate_onnx(
    path: str | os.PathLike[str],
    sim: QuantSim,
    inputs: Any,
    *,
    batch_size: int = 64,
    optimization_level: str = "basic",
    disabled_optimizers: Sequence[str] = (),
    providers: Sequence[str] | str | None = None,
) -> OnnxValidation:
    """Run the exported model in onnxruntime and compare its outputs with ``sim.model``'s.

    Args:
        path: an ONNX model written by :func:`export_onnx` (the QDQ model, or the FP32 one with a float sim).
        sim: the sim it was exported from.
        inputs: one batch (a tensor, a tuple of tensors for several inputs, or a dict of keyword inputs) or a
            list of such batches. Batches are split into chunks of ``batch_size`` (or the model's fixed
            batch size).
        batch_size: samples per onnxruntime call.
        optimization_level: onnxruntime graph optimizations. ``"basic"`` (the default) runs every
            QuantizeLinear/DequantizeLinear as written around float ops, which reproduces the sim up to
            float accumulation order. ``"extended"`` and ``"all"`` (onnxruntime's default) also fuse
            DQ -> op -> Q into integer kernels (QLinearConv, QGemm, QLinearAdd ...): on x86 CPUs without
            VNNI these multiply uint8 x int8 with 16-bit saturation, so 8-bit weights can be off by tens of
            quantization steps (onnxruntime's documented ``reduce_range`` issue; 7-bit weights avoid it).
            ``"disabled"`` turns every optimization off.
        disabled_optimizers: onnxruntime graph transformers to switch off, e.g.
            ``["WeightBiasQuantization"]``: from ``"basic"`` on, onnxruntime quantizes float weights of a
            Conv/Gemm between quantized tensors to int8 per tensor (and biases to int32), which the sim does
            not do for layers it keeps in float.
        providers: onnxruntime execution providers in priority order (e.g. ``["CUDAExecutionProvider",
            "CPUExecutionProvider"]``); default CPU only. ``"available"`` takes every provider this
            onnxruntime build offers (``onnxruntime.get_available_providers()``). A provider the build
            lacks is an error naming the available ones.

    Returns:
        The agreement figures (:class:`OnnxValidation`).
    """
    sim = _check_sim(sim, "validate_onnx")
    ort = _require_ort()
    if optimization_level not in _LEVELS:
        raise parameter_error("optimization_level", "validate_onnx", f"one of {_LEVELS}", optimization_level)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise parameter_error("batch_size", "validate_onnx", "a positive int", batch_size)
    level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[optimization_level]
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.log_severity_level = 3
    if isinstance(disabled_optimizers, str) or not all(isinstance(d, str) for d in disabled_optimizers):
        raise parameter_error(
            "disabled_optimizers", "validate_onnx", "a list of onnxruntime transformer names", disabled_optimizers
        )
    chosen = resolve_providers(providers, ort.get_available_providers())
    session = ort.InferenceSession(
        os.fspath(path), options, providers=list(chosen), disabled_optimizers=list(disabled_optimizers) or None
    )
    feeds_meta = session.get_inputs()
    fixed = feeds_meta[0].shape[0] if feeds_meta and feeds_meta[0].shape else None
    chunk = fixed if isinstance(fixed, int) and fixed > 0 else batch_size

    sim_out: list[list[Tensor]] = []
    ort_out: list[list[np.ndarray]] = []
    count = 0
    device = _device(sim)
    training = sim.model.training
    sim.model.eval()
    try:
        for batch in _batches(inputs):
            args, kwargs = as_model_args(batch)
            tensors = [*args, *kwargs.values()]
            if not tensors or not all(isinstance(t, Tensor) for t in tensors):
                raise InvalidInputError("validate_onnx: every input must be a tensor.")
            if len(tensors) != len(feeds_meta):
                raise InvalidInputError(f"validate_onnx: the model takes {len(feeds_meta)} input(s); a batch has {len(tensors)}.")
            n = int(tensors[0].shape[0]) if tensors[0].dim() else 1
            for start in range(0, n, chunk):
                stop = start + chunk
                if fixed == chunk and stop > n:
                    break
                part_args = [a[start:stop] for a in args]
                part_kwargs = {k: v[start:stop] for k, v in kwargs.items()}
                with torch.no_grad():
                    ref = sim.model(*move_to(part_args, device), **move_to(part_kwargs, device))
                sim_out.append([t.detach().float().cpu() for t in pytree.tree_leaves(ref) if isinstance(t, Tensor)])
                feed = {m.name: t.detach().cpu().numpy() for m, t in zip(feeds_meta, [*part_args, *part_kwargs.values()])}
                ort_out.append(session.run(None, feed))
                count += int(part_args[0].shape[0]) if part_args else int(next(iter(part_kwargs.values())).shape[0])
    finally:
        sim.model.train(training)
    if not sim_out:
        raise InvalidInputError(
            f"validate_onnx: no complete batch of {chunk} sample(s) to compare (the model's batch size is fixed)."
        )
    max_err = 0.0
    total_err = 0.0
    total_n = 0
    max_out = 0.0
    agree = 0
    positions = 0
    exact = 0
    for ref_list, got_list in zip(sim_out, ort_out):
        if len(ref_list) != len(got_list):
            raise InvalidInputError(f"validate_onnx: the ONNX model returns {len(got_list)} outputs, the sim {len(ref_list)}.")
        for i, (ref, got_np) in enumerate(zip(ref_list, got_list)):
            got = torch.from_numpy(np.asarray(got_np, dtype=np.float32))
            if got.shape != ref.shape:
                raise InvalidInputError(
                    f"validate_onnx: output {i} has shape {tuple(got.shape)} in ONNX and {tuple(ref.shape)} in the sim."
                )
            diff = (got - ref).abs()
            if diff.numel():
                max_err = max(max_err, float(diff.max()))
                total_err += float(diff.sum())
                exact += int((diff == 0).sum())
                total_n += diff.numel()
                max_out = max(max_out, float(ref.abs().max()))
            if i == 0 and ref.dim() >= 2 and ref.shape[1] >= 2:
                agree += int((got.argmax(1) == ref.argmax(1)).sum())
                positions += got.argmax(1).numel()
    return OnnxValidation(
        num_samples=count,
        top1_agreement=agree / positions if positions else None,
        max_abs_error=max_err,
        mean_abs_error=total_err / max(1, total_n),
        max_abs_output=max_out,
        output_quantum=_output_quantum(sim),
        exact_fraction=exact / max(1, total_n),
        optimization_level=optimization_level,
        disabled_optimizers=tuple(disabled_optimizers),
        providers=tuple(session.get_providers()),
    )
