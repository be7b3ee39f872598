"""A ``torch.export`` program in PT2E's quantized representation, for ExecuTorch and other PT2 users.

Every enabled quantizer of the sim becomes the ``quantized_decomposed`` pair PyTorch's PT2E flow writes
(``quantize_per_tensor -> dequantize_per_tensor`` for activations, ``quantize_per_channel ->
dequantize_per_channel`` or the per-tensor pair for weights), with the sim's scale, zero point and integer
range (``int8``/``uint8`` storage up to 8 bits, ``int16``/``uint16`` above; a 4-bit grid is ``quant_min=-8,
quant_max=7`` in ``int8``). Float16 quantizers become two casts. The program computes what the sim computes
(same rounding: ``round(x * (1 / scale))``). Lowering it to an ExecuTorch backend is left to the backend's
own tools (``to_edge`` / partitioners); they are not installed here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._data import as_model_args
from .._errors import InvalidInputError
from ..quantsim import FakeQuantizer, QuantSim

__all__ = ["export_pt2e"]


def _dtype(q: FakeQuantizer) -> torch.dtype:
    qmin, _ = q.quant_range
    if q.bitwidth > 8:
        return torch.int16 if qmin < 0 else torch.uint16
    return torch.int8 if qmin < 0 else torch.uint8


class _QDQ(nn.Module):
    """``quantized_decomposed`` quantize -> dequantize with one quantizer's encoding."""

    def __init__(self, q: FakeQuantizer) -> None:
        super().__init__()
        import torch.ao.quantization.fx._decomposed

        self.kind = "off" if not q.enabled else ("float16" if q.dtype == "float" and q.bitwidth == 16 else q.dtype)
        if self.kind == "float" or (q.dtype == "float" and q.bitwidth == 32):
            self.kind = "off"
        self.axis = q.axis
        self.qmin, self.qmax = q.quant_range
        self.dtype = _dtype(q) if self.kind == "int" else torch.int8
        scale = q.scale if q.scale is not None else torch.ones(1)
        zp = q.zero_point if q.zero_point is not None else torch.zeros(1, dtype=torch.int32)
        self.register_buffer("scales", scale.detach().to(torch.float32).clone())
        self.register_buffer("zero_points", zp.detach().to(torch.int64).clone())
        self.scale_f, self.zp_i = float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0])

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "off" or not x.is_floating_point():
            return x
        if self.kind == "float16":
            return x.to(torch.float16).to(x.dtype)
        ops = torch.ops.quantized_decomposed
        if self.axis is None:
            q = ops.quantize_per_tensor(x, self.scale_f, self.zp_i, self.qmin, self.qmax, self.dtype)
            out: Tensor = ops.dequantize_per_tensor(q, self.scale_f, self.zp_i, self.qmin, self.qmax, self.dtype)
            return out
        q = ops.quantize_per_channel(x, self.scales, self.zero_points, self.axis, self.qmin, self.qmax, self.dtype)
        out = ops.dequantize_per_channel(q, self.scales, self.zero_points, self.axis, self.qmin, self.qmax, self.dtype)
        return out


def export_pt2e(sim: QuantSim, dummy_input: Any = None) -> torch.export.ExportedProgram:
    """The sim as a ``torch.export`` program with PT2E's quantize/dequantize ops.

    Args:
        sim: a calibrated :class:`~aq_search.QuantSim` (AdaRounded weights are written as their
            quantize-dequantized values, whose re-quantization gives AdaRound's integers back).
        dummy_input: the example input for ``torch.export`` (default ``sim.dummy_input``); its first
            dimension is exported as dynamic unless it is 1 (which ``torch.export`` specializes).

    Returns:
        The ``ExportedProgram``; ``program.module()(x)`` computes what ``sim.model(x)`` computes.
    """
    from ._markers import _check_encodings, _check_sim, _export_module

    sim = _check_sim(sim, "export_pt2e")
    _check_encodings(sim)
    gm, quantizers = _export_module(sim)
    with torch.no_grad():
        for name, q in quantizers.items():
            qdq = _QDQ(q)
            if q.kind == "param":
                module: Any = gm.get_submodule(name.rpartition(".")[0])
                plist: Any = module.parametrizations.weight
                if q.rounding is not None and q.enabled:  # AdaRound: bake the rounded weight in
                    plist.original.copy_(sim.layer(name.rpartition(".")[0]).weight)
                plist[0] = qdq
            else:
                for node in gm.graph.nodes:
                    if node.meta.get("aq_quantizer") == name and node.op == "call_module":
                        parent, _, key = str(node.target).rpartition(".")
                        setattr(gm.get_submodule(parent), key, qdq)
    dummy = sim.dummy_input if dummy_input is None else dummy_input
    args, kwargs = as_model_args(dummy)
    dynamic: Any = None
    if not kwargs:  # a dynamic batch dimension (give a dummy input with a batch > 1: size 1 is specialized)
        dynamic = tuple({0: torch.export.Dim.AUTO} if isinstance(a, Tensor) and a.dim() > 0 else None for a in args)
    try:
        return torch.export.export(gm, tuple(args), kwargs=dict(kwargs) or None, dynamic_shapes=dynamic)
    except Exception as err:
        raise InvalidInputError(f"torch.export could not capture the quantized model: {type(err).__name__}: {err}") from err
