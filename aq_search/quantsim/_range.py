"""Range setting ("quant schemes") as small strategy classes.

Activation ranges are estimated from :class:`RangeStats` (exact min/max plus a histogram collected
over the calibration batches); parameter ranges from the weight tensor itself, per channel or per
tensor. Each estimator returns the ``(lo, hi)`` range a quantizer's grid should cover.

=============  ==================================================================================
scheme         what it does
=============  ==================================================================================
``tf``         min-max of everything seen.
``tf_enhanced`` searches the clipping range that minimizes the expected quantization noise, with
               clipping noise penalized (``clipping_penalty``, 3x by default), like AIMET's SQNR.
``percentile`` clips at a percentile of the values (e.g. 99.99), per tail.
``mse``        searches the clipping range that minimizes the mean squared error.
=============  ==================================================================================
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._errors import InvalidInputError
from ._fake_quant import MIN_SCALE, int_range
from ._weight_search import search_weight_range

__all__ = [
    "QUANT_SCHEMES",
    "MinMaxEstimator",
    "MseEstimator",
    "PercentileEstimator",
    "RangeEstimator",
    "RangeStats",
    "SqnrEstimator",
    "make_range_estimator",
]

_NUM_BINS = 2048
_NUM_CANDIDATES = 128
#: Weight of the (signed error sum)^2 term in tf_enhanced's weight range search (see _weight_search).
DEFAULT_BIAS_PENALTY = 1.0


class RangeStats:
    """What an activation quantizer saw during calibration: exact min/max and a histogram.

    The histogram keeps ``num_bins`` equal-width bins over ``[lo, hi]``; when a batch widens the
    range, the old counts are redistributed over the new bins in proportion to their overlap.
    """

    def __init__(self, num_bins: int = _NUM_BINS, histogram: bool = True) -> None:
        self.num_bins = num_bins
        self.keep_histogram = histogram
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.hist: Tensor | None = None
        self.lo = 0.0
        self.hi = 0.0

    @property
    def empty(self) -> bool:
        return self.count == 0

    def reset(self) -> None:
        self.__init__(self.num_bins, self.keep_histogram)  # type: ignore[misc]

    def update(self, x: Tensor) -> None:
        x = x.detach()
        if x.numel() == 0:
            return
        if not x.is_floating_point():
            x = x.float()
        xmin, xmax = torch.aminmax(x)
        bmin, bmax = float(xmin), float(xmax)
        if not (math.isfinite(bmin) and math.isfinite(bmax)):
            x = x[torch.isfinite(x)]
            if x.numel() == 0:
                return
            xmin, xmax = torch.aminmax(x)
            bmin, bmax = float(xmin), float(xmax)
        self.min = min(self.min, bmin)
        self.max = max(self.max, bmax)
        self.count += x.numel()
        if not self.keep_histogram:
            return
        x = x.float()
        if self.hist is None:
            lo, hi = bmin, bmax
            if hi <= lo:
                hi = lo + max(abs(lo) * 1e-6, 1e-8)
            self.lo, self.hi = lo, hi
            self.hist = torch.histc(x, bins=self.num_bins, min=lo, max=hi).double().cpu()  # stats live on the CPU
            return
        if bmin < self.lo or bmax > self.hi:
            self._widen(min(bmin, self.lo), max(bmax, self.hi))
        self.hist += torch.histc(x, bins=self.num_bins, min=self.lo, max=self.hi).double().cpu()

    def _widen(self, lo: float, hi: float) -> None:
        assert self.hist is not None
        n = self.num_bins
        old_edges = torch.linspace(self.lo, self.hi, n + 1, dtype=torch.float64)
        width = (hi - lo) / n
        a, b = old_edges[:-1], old_edges[1:]
        first = torch.clamp(((a - lo) / width).floor().long(), 0, n - 1)
        boundary = lo + (first + 1).double() * width
        frac_first = torch.clamp((torch.minimum(b, boundary) - a) / (b - a), 0.0, 1.0)
        new = torch.zeros(n, dtype=torch.float64)
        new.index_add_(0, first, self.hist * frac_first)
        second = torch.clamp(first + 1, max=n - 1)
        new.index_add_(0, second, self.hist * (1.0 - frac_first))
        self.hist = new
        self.lo, self.hi = lo, hi

    def centers(self) -> Tensor:
        assert self.hist is not None
        width = (self.hi - self.lo) / self.num_bins
        return self.lo + width * (torch.arange(self.num_bins, dtype=torch.float64) + 0.5)


class RangeEstimator(abc.ABC):
    """Chooses the range ``(lo, hi)`` a quantizer's grid covers."""

    name: str = ""
    needs_histogram: bool = True

    @abc.abstractmethod
    def activation_range(self, stats: RangeStats, bitwidth: int, symmetric: bool) -> tuple[float, float]:
        """Range for an activation from calibration statistics."""

    @abc.abstractmethod
    def param_range(self, w: Tensor, axis: int | None, bitwidth: int, symmetric: bool) -> tuple[Tensor, Tensor]:
        """Per-channel (``axis`` given) or per-tensor range of a weight; 1-d tensors."""

    def to_dict(self) -> dict[str, object]:
        return {"scheme": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "scheme")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeEstimator) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.to_dict().items())))


def _channels(w: Tensor, axis: int | None) -> Tensor:
    w = w.detach().float()
    if axis is None:
        return w.reshape(1, -1)
    return w.movedim(axis, 0).reshape(w.shape[axis], -1)


class MinMaxEstimator(RangeEstimator):
    """``tf``: the min and max of everything seen."""

    name = "tf"
    needs_histogram = False

    def activation_range(self, stats: RangeStats, bitwidth: int, symmetric: bool) -> tuple[float, float]:
        if symmetric:
            m = max(abs(stats.min), abs(stats.max))
            return -m, m
        return stats.min, stats.max

    def param_range(self, w: Tensor, axis: int | None, bitwidth: int, symmetric: bool) -> tuple[Tensor, Tensor]:
        c = _channels(w, axis)
        lo, hi = c.amin(1), c.amax(1)
        if symmetric:
            m = torch.maximum(lo.abs(), hi.abs())
            return -m, m
        return lo, hi


class PercentileEstimator(RangeEstimator):
    """``percentile``: clip each tail at ``percentile`` (e.g. 99.99 keeps 99.99% of the values)."""

    name = "percentile"

    def __init__(self, percentile: float = 99.99) -> None:
        if not isinstance(percentile, (int, float)) or isinstance(percentile, bool) or not 50.0 < percentile <= 100.0:
            raise InvalidInputError(
                f"The 'percentile' parameter must be a number in (50, 100], such as 99.9 or 99.99. Got {percentile!r} instead."
            )
        self.percentile = float(percentile)

    def to_dict(self) -> dict[str, object]:
        return {"scheme": self.name, "percentile": self.percentile}

    def activation_range(self, stats: RangeStats, bitwidth: int, symmetric: bool) -> tuple[float, float]:
        assert stats.hist is not None
        hist = stats.hist
        total = float(hist.sum())
        cdf = torch.cumsum(hist, 0) / total
        edges = torch.linspace(stats.lo, stats.hi, stats.num_bins + 1, dtype=torch.float64)
        q = self.percentile / 100.0

        def value_at(p: float) -> float:
            idx = int(torch.searchsorted(cdf, torch.tensor([p], dtype=torch.float64)).clamp(max=stats.num_bins - 1))
            prev = float(cdf[idx - 1]) if idx > 0 else 0.0
            inbin = float(hist[idx]) / total
            frac = 0.0 if inbin <= 0 else min(max((p - prev) / inbin, 0.0), 1.0)
            return float(edges[idx] + frac * (edges[idx + 1] - edges[idx]))

        lo = stats.min if self.percentile >= 100.0 else max(stats.min, value_at(1.0 - q))
        hi = stats.max if self.percentile >= 100.0 else min(stats.max, value_at(q))
        if symmetric:
            m = max(abs(lo), abs(hi))
            return -m, m
        return lo, hi

    def param_range(self, w: Tensor, axis: int | None, bitwidth: int, symmetric: bool) -> tuple[Tensor, Tensor]:
        c = _channels(w, axis)
        n = c.shape[1]
        q = self.percentile / 100.0
        k_hi = min(n, max(1, math.ceil(q * n)))
        if symmetric:
            m = c.abs().kthvalue(k_hi, dim=1).values
            return -m, m
        k_lo = min(n, max(1, math.floor((1.0 - q) * n) + 1))
        return c.kthvalue(k_lo, dim=1).values, c.kthvalue(k_hi, dim=1).values


class SqnrEstimator(RangeEstimator):
    """``tf_enhanced``: minimize quantization noise plus ``clipping_penalty`` x clipping noise.

    For activations the noise is estimated from the histogram (rounding noise ``scale**2 / 12`` per
    value inside the range, squared distance to the range for clipped values). For weights, AIMET's
    101 candidate scales per channel are scored exactly on the weight values, with a ``bias_penalty``
    term for the systematic output shift rounding causes (:mod:`._weight_search`).
    """

    name = "tf_enhanced"

    def __init__(
        self,
        clipping_penalty: float = 3.0,
        num_candidates: int = _NUM_CANDIDATES,
        bias_penalty: float = DEFAULT_BIAS_PENALTY,
    ) -> None:
        if not clipping_penalty > 0:
            raise InvalidInputError(f"The 'clipping_penalty' parameter must be > 0. Got {clipping_penalty!r} instead.")
        if not bias_penalty >= 0:
            raise InvalidInputError(f"The 'bias_penalty' parameter must be >= 0. Got {bias_penalty!r} instead.")
        self.clipping_penalty = float(clipping_penalty)
        self.num_candidates = int(num_candidates)
        self.bias_penalty = float(bias_penalty)

    def to_dict(self) -> dict[str, object]:
        return {"scheme": self.name, "clipping_penalty": self.clipping_penalty, "bias_penalty": self.bias_penalty}

    # -- activations -----------------------------------------------------------------------------
    def activation_range(self, stats: RangeStats, bitwidth: int, symmetric: bool) -> tuple[float, float]:
        assert stats.hist is not None
        # Linear steps near the full range plus log-spaced ones down to 1e-4 of it (heavy tails).
        linear = torch.arange(1, self.num_candidates + 1, dtype=torch.float64) / self.num_candidates
        geometric = torch.logspace(-4, 0, self.num_candidates, dtype=torch.float64)
        fracs = torch.unique(torch.cat([linear, geometric]))
        lo0, hi0 = min(stats.min, 0.0), max(stats.max, 0.0)
        qmin, qmax = int_range(bitwidth, symmetric)
        if symmetric:
            m = max(-lo0, hi0)
            his = m * fracs
            los = -his * (-qmin / qmax)
        else:
            lo_c = lo0 * fracs if lo0 < 0 else torch.zeros(1, dtype=torch.float64)
            hi_c = hi0 * fracs if hi0 > 0 else torch.zeros(1, dtype=torch.float64)
            los = lo_c[:, None].expand(len(lo_c), len(hi_c)).reshape(-1).contiguous()
            his = hi_c[None, :].expand(len(lo_c), len(hi_c)).reshape(-1).contiguous()
        scale = torch.clamp((his - los) / (qmax - qmin), min=MIN_SCALE)
        noise = self._histogram_noise(stats.centers(), stats.hist, los, his, scale)
        best = int(torch.argmin(noise))
        if symmetric:  # the grid [qmin, qmax] * his / qmax: its encoding is the one of [-his, his]
            return -float(his[best]), float(his[best])
        return float(los[best]), float(his[best])

    def _histogram_noise(self, centers: Tensor, counts: Tensor, los: Tensor, his: Tensor, scale: Tensor) -> Tensor:
        """Expected noise of each candidate range, in O(log bins) per candidate with prefix sums.

        Rounding noise is ``scale**2 / 12`` per value inside the range; a clipped value adds its
        squared distance to the range, times the clipping penalty.
        """
        zero = torch.zeros(1, dtype=torch.float64)
        n = torch.cat([zero, torch.cumsum(counts, 0)])
        s1 = torch.cat([zero, torch.cumsum(counts * centers, 0)])
        s2 = torch.cat([zero, torch.cumsum(counts * centers * centers, 0)])
        i_lo = torch.searchsorted(centers, los, right=False)  # bins strictly below lo: [0, i_lo)
        i_hi = torch.searchsorted(centers, his, right=True)  # bins strictly above hi: [i_hi, B)
        below = s2[i_lo] - 2 * los * s1[i_lo] + los * los * n[i_lo]
        above = (s2[-1] - s2[i_hi]) - 2 * his * (s1[-1] - s1[i_hi]) + his * his * (n[-1] - n[i_hi])
        inside = n[i_hi] - n[i_lo]
        return scale * scale / 12.0 * inside + self.clipping_penalty * (below.clamp_min(0) + above.clamp_min(0))

    # -- parameters ------------------------------------------------------------------------------
    def param_range(self, w: Tensor, axis: int | None, bitwidth: int, symmetric: bool) -> tuple[Tensor, Tensor]:
        """AIMET's 101 candidate scales per channel, scored exactly on the weights (:mod:`._weight_search`)."""
        c = _channels(w, axis)
        groups = 1
        if axis is None and w.dim() >= 2 and w.shape[0] > 0:
            groups = w.shape[0]  # per tensor: the bias term per output channel (the rows of dim 0)
        return search_weight_range(
            c, bitwidth, symmetric, self.clipping_penalty, self.bias_penalty, bias_groups=groups
        )


class MseEstimator(SqnrEstimator):
    """``mse``: the clipping range with the least mean squared error (no clipping penalty)."""

    name = "mse"

    def __init__(self, num_candidates: int = _NUM_CANDIDATES) -> None:
        super().__init__(clipping_penalty=1.0, num_candidates=num_candidates, bias_penalty=0.0)

    def to_dict(self) -> dict[str, object]:
        return {"scheme": self.name}


#: Scheme names accepted everywhere a scheme is asked for (AIMET's names are aliases).
QUANT_SCHEMES = ("tf", "tf_enhanced", "percentile", "mse")
_ALIASES = {
    "min_max": "tf",
    "minmax": "tf",
    "post_training_tf": "tf",
    "sqnr": "tf_enhanced",
    "post_training_tf_enhanced": "tf_enhanced",
    "post_training_percentile": "percentile",
}


@dataclass(frozen=True)
class _SchemeSpec:
    name: str
    percentile: float | None


def _parse_scheme(scheme: object) -> _SchemeSpec:
    if isinstance(scheme, RangeEstimator):
        d = scheme.to_dict()
        return _SchemeSpec(str(d["scheme"]), d.get("percentile"))  # type: ignore[arg-type]
    name = getattr(scheme, "name", scheme)  # accepts enum members such as AIMET's QuantScheme
    if not isinstance(name, str):
        raise InvalidInputError(
            f"The quant scheme must be one of {', '.join(QUANT_SCHEMES)} (or 'percentile:99.9'). Got {scheme!r} instead."
        )
    text = name.strip().lower()
    pct: float | None = None
    if ":" in text:
        text, _, value = text.partition(":")
        try:
            pct = float(value)
        except ValueError:
            raise InvalidInputError(
                f"The percentile in quant scheme {scheme!r} must be a number, e.g. 'percentile:99.99'."
            ) from None
    text = _ALIASES.get(text, text)
    if text not in QUANT_SCHEMES:
        raise InvalidInputError(
            f"Unknown quant scheme {scheme!r}. Valid schemes: {', '.join(QUANT_SCHEMES)} "
            "(a percentile may be given as 'percentile:99.9')."
        )
    return _SchemeSpec(text, pct)


def make_range_estimator(scheme: object, percentile: float | None = None) -> RangeEstimator:
    """Build the estimator for a scheme name (``"tf"``, ``"tf_enhanced"``, ``"percentile"``, ``"mse"``).

    Also accepts an existing :class:`RangeEstimator`, ``"percentile:99.9"``, and AIMET's scheme names
    (``post_training_tf_enhanced`` ...).
    """
    if isinstance(scheme, RangeEstimator):
        return scheme
    spec = _parse_scheme(scheme)
    if spec.name == "tf":
        return MinMaxEstimator()
    if spec.name == "tf_enhanced":
        return SqnrEstimator()
    if spec.name == "mse":
        return MseEstimator()
    value = spec.percentile if spec.percentile is not None else percentile
    return PercentileEstimator(99.99 if value is None else value)
