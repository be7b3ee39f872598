"""The fake quantizer module: one per quantized tensor."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .._errors import EncodingsNotComputedError, InvalidInputError
from .._numerics import channel_shape, per_channel
from ._fake_quant import encoding_from_range, int_range, range_from_encoding
from ._range import RangeEstimator, RangeStats, make_range_estimator

__all__ = ["FakeQuantizer", "check_bitwidth"]

MIN_BITWIDTH = 2
MAX_BITWIDTH = 16


def check_bitwidth(bitwidth: object, what: str = "bitwidth") -> int:
    """Validate an integer bit-width (2..16)."""
    if isinstance(bitwidth, bool) or not isinstance(bitwidth, int) or not MIN_BITWIDTH <= bitwidth <= MAX_BITWIDTH:
        raise InvalidInputError(
            f"The '{what}' parameter must be an int in [{MIN_BITWIDTH}, {MAX_BITWIDTH}] "
            f"(use None to leave the tensor in float). Got {bitwidth!r} instead."
        )
    return bitwidth


_CHUNK = 1 << 18


def _fake_quant_per_tensor_inference(
    x: Tensor, scale: float, zero_point: int, qmin: int, qmax: int, inv: float | None = None
) -> Tensor:
    """``torch.fake_quantize_per_tensor_affine`` without autograd, bit for bit, 2-3x faster on CPU.

    ``clamp(round(x / s) + zp, qmin, qmax) - zp == clamp(round(x / s), qmin - zp, qmax - zp)`` for an
    integer zero point, so four in-place passes do it; large tensors go in cache-sized chunks so the
    four passes read memory about once.
    """
    if inv is None:
        inv = float(torch.tensor(1.0, dtype=torch.float32) / torch.tensor(scale, dtype=torch.float32))
    lo, hi = qmin - zero_point, qmax - zero_point
    if x.dtype != torch.float32 or not x.is_contiguous() or x.numel() <= 2 * _CHUNK or x.device.type != "cpu":
        y = torch.mul(x, inv)
        return y.round_().clamp_(lo, hi).mul_(scale)
    out = torch.empty_like(x)
    flat_in, flat_out = x.view(-1), out.view(-1)
    for start in range(0, flat_in.numel(), _CHUNK):
        o = flat_out[start : start + _CHUNK]
        torch.mul(flat_in[start : start + _CHUNK], inv, out=o)
        o.round_().clamp_(lo, hi).mul_(scale)
    return out


class FakeQuantizer(nn.Module):
    """Simulates the quantization of one tensor.

    Activation quantizers (``kind="activation"``) are asymmetric and per tensor; they observe data
    while :attr:`observing` is set, then quantize with the encoding computed from what they saw.
    Parameter quantizers (``kind="param"``) are symmetric, per channel along ``axis`` or per tensor,
    and are installed as a parametrization of their module's weight, so the module's float weight
    stays untouched and ``module.weight`` returns the fake-quantized weight.

    ``dtype="float"`` simulates a float format instead (``bitwidth`` 16: a cast through float16;
    32: no change), for layers a mixed-precision result keeps in float.

    Encodings live in the non-persistent buffers ``scale`` and ``zero_point`` and go to and from
    JSON through :meth:`encoding_dict` / :meth:`set_encoding_dict`. An AdaRound result is the
    persistent buffer ``rounding`` (0 or 1 per weight, added to ``floor(w / scale)``).
    """

    scale: Tensor | None
    zero_point: Tensor | None
    rounding: Tensor | None

    def __init__(
        self,
        *,
        kind: str,
        bitwidth: int = 8,
        symmetric: bool | None = None,
        scheme: RangeEstimator | str = "tf_enhanced",
        axis: int | None = None,
        enabled: bool = True,
        dtype: str = "int",
        keep_histogram: bool = True,
    ) -> None:
        super().__init__()
        if kind not in ("activation", "param"):
            raise InvalidInputError(f"The 'kind' parameter must be 'activation' or 'param'. Got {kind!r} instead.")
        self.kind = kind
        self.symmetric = (kind == "param") if symmetric is None else bool(symmetric)
        self.axis = axis
        self.enabled = bool(enabled)
        self.estimator = make_range_estimator(scheme)
        self.observing = False
        self.frozen = False
        self.stats: RangeStats | None = None
        self._keep_histogram = keep_histogram
        self._dtype = "int"
        self._bitwidth = 8
        self._set_format(bitwidth, dtype)
        self.register_buffer("scale", None, persistent=False)
        self.register_buffer("zero_point", None, persistent=False)
        self.register_buffer("rounding", None)
        self._qparams: tuple[float, int, int, int, float] | None = None
        #: ``(lo, hi)`` of a ReLU/ReLU6 folded into this quantizer (the activation op is skipped).
        self.fused_clamp: tuple[float, float] | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("scale", "zero_point", "fused_clamp"):
            self.__dict__["_qparams"] = None
        super().__setattr__(name, value)

    # -- format ----------------------------------------------------------------------------------
    def _set_format(self, bitwidth: int, dtype: str) -> None:
        if dtype == "float":
            if bitwidth not in (16, 32):
                raise InvalidInputError(f"A float quantizer's bitwidth must be 16 or 32. Got {bitwidth!r} instead.")
        elif dtype == "int":
            check_bitwidth(bitwidth)
        else:
            raise InvalidInputError(f"The 'dtype' parameter must be 'int' or 'float'. Got {dtype!r} instead.")
        self._bitwidth = bitwidth
        self._dtype = dtype

    @property
    def bitwidth(self) -> int:
        return self._bitwidth

    @property
    def dtype(self) -> str:
        return self._dtype

    @property
    def quant_range(self) -> tuple[int, int]:
        return int_range(self._bitwidth, self.symmetric)

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    @property
    def has_encoding(self) -> bool:
        return self._dtype == "float" or self.scale is not None

    def set_format(self, bitwidth: int, dtype: str = "int") -> bool:
        """Change bit-width / dtype; returns True when the encoding had to be dropped.

        The encoding is recomputed from the stored statistics (activations) when there are some;
        parameter encodings are recomputed by the owner (:meth:`QuantSim.compute_param_encodings`).
        An AdaRound rounding is only valid for the bit-width it was learned at and is dropped.
        """
        if (bitwidth, dtype) == (self._bitwidth, self._dtype):
            return False
        self._set_format(bitwidth, dtype)
        self.rounding = None
        self.frozen = False
        had = self.scale is not None
        self.scale = None
        self.zero_point = None
        self._qparams = None
        if dtype == "int" and self.kind == "activation" and self.stats is not None and not self.stats.empty:
            self.compute_encoding()
            return False
        return had

    def set_estimator(self, scheme: RangeEstimator | str) -> None:
        self.estimator = make_range_estimator(scheme)

    # -- calibration -----------------------------------------------------------------------------
    def start_observing(self, reset: bool = True) -> None:
        if reset or self.stats is None:
            self.stats = RangeStats(histogram=self._keep_histogram or self.estimator.needs_histogram)
        self.observing = True

    def stop_observing(self) -> None:
        self.observing = False

    def compute_encoding(self, weight: Tensor | None = None) -> None:
        """Compute the encoding from the statistics (activation) or from ``weight`` (param)."""
        if self._dtype == "float" or self.frozen:
            return
        if self.kind == "param":
            if weight is None:
                raise InvalidInputError("A param quantizer's encoding is computed from its weight; pass weight=.")
            lo, hi = self.estimator.param_range(weight, self.axis, self._bitwidth, self.symmetric)
        else:
            if self.stats is None or self.stats.empty:
                raise EncodingsNotComputedError("this activation quantizer saw no calibration data")
            if self.estimator.needs_histogram and self.stats.hist is None:
                raise EncodingsNotComputedError(
                    f"scheme {self.estimator.name!r} needs histograms, but calibration collected min/max only; "
                    "compute encodings again with this scheme"
                )
            lo_f, hi_f = self.estimator.activation_range(self.stats, self._bitwidth, self.symmetric)
            lo, hi = torch.tensor([lo_f], dtype=torch.float32), torch.tensor([hi_f], dtype=torch.float32)
        self.set_encoding(*encoding_from_range(lo, hi, self._bitwidth, self.symmetric))

    def set_encoding(self, scale: Tensor, zero_point: Tensor) -> None:
        device = self.rounding.device if self.rounding is not None else None
        self.scale = scale.detach().to(torch.float32).reshape(-1).contiguous().to(device)
        self.zero_point = zero_point.detach().to(torch.int32).reshape(-1).contiguous().to(device)
        self._qparams = None

    # -- forward ---------------------------------------------------------------------------------
    def _apply_clamp(self, x: Tensor) -> Tensor:
        assert self.fused_clamp is not None
        lo, hi = self.fused_clamp
        if lo == 0.0 and hi == math.inf:
            return torch.relu(x)
        return torch.clamp(x, lo, hi)

    def forward(self, x: Tensor) -> Tensor:
        if self.fused_clamp is not None and (
            not self.enabled or self.observing or self._dtype == "float" or not x.is_floating_point()
        ):
            x = self._apply_clamp(x)
        if not self.enabled or not x.is_floating_point():
            return x
        if self.observing:
            if self.stats is not None:
                self.stats.update(x)
            return x
        if self._dtype == "float":
            return x.to(torch.float16).to(x.dtype) if self._bitwidth == 16 else x
        scale, zp = self.scale, self.zero_point
        if scale is None or zp is None:
            raise EncodingsNotComputedError(
                "The quantized model was run before its encodings exist: call sim.compute_encodings(batches) "
                "or sim.load_encodings(path) first."
            )
        qmin, qmax = self.quant_range
        if self.rounding is not None:
            return self._adarounded(x, scale, zp, qmin, qmax)
        if self.axis is None:
            if self._qparams is None:
                self._qparams = self._per_tensor_qparams(scale, zp, qmin, qmax)
            s_f, z_i, lo_q, hi_q, inv_f = self._qparams
            if torch.is_grad_enabled() and x.requires_grad:
                return torch.fake_quantize_per_tensor_affine(x, s_f, z_i, lo_q, hi_q)
            return _fake_quant_per_tensor_inference(x, s_f, z_i, lo_q, hi_q, inv_f)
        if torch.is_grad_enabled() and x.requires_grad:
            return torch.fake_quantize_per_channel_affine(x, scale.to(x.device), zp.to(x.device), self.axis, qmin, qmax)
        # Same math as the fused kernel (bit for bit), several times faster on CPU for weights.
        shape = channel_shape(x.dim(), self.axis)
        s = scale.to(x.device).reshape(shape)
        q = torch.round(x * (1.0 / s))
        if self.symmetric:
            return q.clamp_(qmin, qmax).mul_(s)
        z = zp.to(device=x.device, dtype=x.dtype).reshape(shape)
        return q.add_(z).clamp_(qmin, qmax).sub_(z).mul_(s)

    def _per_tensor_qparams(self, scale: Tensor, zp: Tensor, qmin: int, qmax: int) -> tuple[float, int, int, int, float]:
        """Python scalars for the fused kernel; a fused ReLU/ReLU6 clamp narrows the integer range.

        ``fq(clamp(x, lo, hi)) == fq(x)`` with the grid clamped to ``[round(lo / s), round(hi / s)] + zp``,
        exactly, because rounding is monotonic: the activation costs nothing extra.
        """
        s, z = float(scale[0]), int(zp[0])
        lo_q, hi_q = qmin, qmax
        inv = 1.0 / scale[:1].to(torch.float32)
        if self.fused_clamp is not None:
            lo, hi = self.fused_clamp
            if math.isfinite(lo):
                lo_q = max(qmin, z + int(torch.round(torch.tensor([lo], dtype=torch.float32) * inv)))
            if math.isfinite(hi):
                hi_q = min(qmax, z + int(torch.round(torch.tensor([hi], dtype=torch.float32) * inv)))
            lo_q, hi_q = min(lo_q, z), max(hi_q, z)
        return s, z, lo_q, hi_q, float(inv)

    def _adarounded(self, x: Tensor, scale: Tensor, zp: Tensor, qmin: int, qmax: int) -> Tensor:
        assert self.rounding is not None
        s, z = per_channel(scale, x.dim(), self.axis), per_channel(zp, x.dim(), self.axis).float()
        q = torch.clamp(torch.floor(x / s) + self.rounding.to(x.dtype) + z, qmin, qmax)
        return (q - z) * s

    # -- serialization ---------------------------------------------------------------------------
    def encoding_dict(self) -> list[dict[str, Any]]:
        """AIMET-style encodings (one dict per channel): bitwidth, scale, offset, min, max, ..."""
        if self._dtype == "float":
            return [{"bitwidth": self._bitwidth, "dtype": "float"}]
        if self.scale is None or self.zero_point is None:
            raise EncodingsNotComputedError("no encoding to export: compute encodings first")
        lo, hi = range_from_encoding(self.scale, self.zero_point, self._bitwidth, self.symmetric)
        qmin, _ = self.quant_range
        # AIMET convention: x = (q + offset) * scale with q in [0, 2**b - 1], so offset = qmin - zero_point.
        offsets = (qmin - self.zero_point.to(torch.int64)).tolist()
        return [
            {
                "bitwidth": self._bitwidth,
                "dtype": "int",
                "is_symmetric": str(self.symmetric),
                "scale": s,
                "offset": o,
                "min": mn,
                "max": mx,
            }
            for s, o, mn, mx in zip(self.scale.tolist(), offsets, lo.tolist(), hi.tolist(), strict=True)
        ]

    def set_encoding_dict(self, entries: list[dict[str, Any]], *, name: str = "") -> None:
        """Load :meth:`encoding_dict` output; raises :class:`InvalidInputError` naming ``name`` on mismatch."""
        if not isinstance(entries, list) or not entries:
            raise InvalidInputError(f"encoding for {name!r} must be a non-empty list of dicts")
        first = entries[0]
        dtype = str(first.get("dtype", "int"))
        bitwidth = first.get("bitwidth")
        if not isinstance(bitwidth, int):
            raise InvalidInputError(f"encoding for {name!r} has no integer 'bitwidth'")
        if dtype == "float":
            self.set_format(bitwidth, "float")
            return
        symmetric = str(first.get("is_symmetric", "False")) == "True"
        expected = self.scale.numel() if (self.axis is not None and self.scale is not None) else None
        if self.axis is None and len(entries) != 1:
            raise InvalidInputError(f"encoding for {name!r} has {len(entries)} channels, but the quantizer is per tensor")
        if expected is not None and len(entries) != expected:
            raise InvalidInputError(f"encoding for {name!r} has {len(entries)} channels, the quantizer has {expected}")
        rounding = self.rounding
        self.set_format(bitwidth, "int")
        self.rounding = rounding
        self.symmetric = symmetric
        qmin, _ = self.quant_range
        try:
            scale = torch.tensor([float(e["scale"]) for e in entries], dtype=torch.float32)
            zp = torch.tensor([qmin - int(e["offset"]) for e in entries], dtype=torch.int32)
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidInputError(f"encoding for {name!r} is malformed: {err}") from None
        self.set_encoding(scale, zp)

    def extra_repr(self) -> str:
        if not self.enabled:
            return "disabled"
        fmt = f"{self._dtype}{self._bitwidth}"
        where = f"per-channel(axis={self.axis})" if self.axis is not None else "per-tensor"
        sym = "symmetric" if self.symmetric else "asymmetric"
        state = "encoded" if self.has_encoding else "no encoding"
        extra = ", adarounded" if self.rounding is not None else ""
        return f"{fmt}, {sym}, {where}, {self.estimator.name}, {state}{extra}"
