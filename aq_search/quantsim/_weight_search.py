"""Weight range search for ``tf_enhanced`` (and ``mse``): AIMET's candidate grid, scored on the exact weights.

Per quantization channel, the candidates are ``num_steps + 1`` scales, like AIMET 2.30's
``TfEnhancedEncodingAnalyzer``: ``scale_k = k / num_steps * (hi0 - lo0) / (qmax - qmin)`` for
``k = 1 .. num_steps + 1`` (``[lo0, hi0]`` is the channel's min-max range widened to contain zero, so
``k = num_steps`` is min-max's grid for asymmetric encodings and ``k = num_steps + 1`` reaches 1.01x it),
plus min-max's own scale (``max|w| / qmax`` for symmetric encodings), so the chosen scale is never
worse than min-max's in the objective. The zero point of an asymmetric candidate is the one of
min-max's grid, ``round(-lo0 / scale_num_steps)``.

Each candidate is scored, per channel, by

* the squared error of the quantize-dequantized weights (rounding error),
* ``clipping_penalty - 1`` more times the squared error of the clipped values (AIMET's 3x clipping noise),
* ``bias_penalty`` x (sum of the signed errors)^2 over each output channel: the systematic shift of
  that channel's output that rounding causes when its inputs have a non-zero mean. The weight MSE
  alone does not track a model's output error well; this term does better (see BENCHMARKS.md,
  "Simulator side by side").

For a per-tensor encoding the bias term is summed over the rows of the tensor's first dimension
(the output channels of a convolution or linear weight). All candidates are scored at once,
vectorized over channels and candidates, in chunks of at most ``max_elements`` values.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._fake_quant import MIN_SCALE, int_range

__all__ = ["candidate_scales", "clipping_lower_bound", "score_candidates", "search_weight_range"]

#: AIMET's candidate count: steps k/100 for k = 1 .. 101.
NUM_STEPS = 100
#: Values this many steps past an end of the grid clip regardless of float rounding.
_MARGIN = 0.501
#: Upper bound on the size of one (channels x candidates x values) block of work.
MAX_ELEMENTS = 1 << 23


def candidate_scales(lo0: Tensor, hi0: Tensor, bitwidth: int, symmetric: bool, num_steps: int = NUM_STEPS) -> Tensor:
    """The candidate scales of each channel, ``(channels, num_steps + 2)``; the last one is min-max's."""
    qmin, qmax = int_range(bitwidth, symmetric)
    full = (hi0 - lo0) / (qmax - qmin)
    k = torch.arange(1, num_steps + 2, dtype=full.dtype, device=full.device) / num_steps
    scales = full[:, None] * k[None, :]
    minmax = torch.maximum(-lo0, hi0) / qmax if symmetric else full
    return torch.cat([scales, minmax[:, None]], 1).clamp_min(MIN_SCALE)


def clipping_lower_bound(sorted_x: Tensor, prefix: tuple[Tensor, Tensor], lo_clip: Tensor, hi_clip: Tensor, s: Tensor) -> Tensor:
    """A lower bound of each candidate's sum of squared clipping errors, ``(C, K)``, from sorted values.

    A value is clipped when it rounds outside the grid, i.e. lies at least half a step past either
    end (``hi_clip``, ``lo_clip``); it then lands on that end. Only the values more than 0.501 steps
    past an end are counted (those clip whatever the float rounding of ``x / s``), so the sum is a
    lower bound of the exact one. ``prefix`` holds the float64 prefix sums (with a leading zero) of
    the sorted values and of their squares.
    """
    p1, p2 = prefix
    n = sorted_x.shape[1]
    hi_t = (hi_clip + _MARGIN * s).to(sorted_x.dtype)
    lo_t = (lo_clip - _MARGIN * s).to(sorted_x.dtype)
    i_hi = torch.searchsorted(sorted_x, hi_t.contiguous(), right=True)  # values > hi_t: [i_hi, n)
    i_lo = torch.searchsorted(sorted_x, lo_t.contiguous(), right=False)  # values < lo_t: [0, i_lo)
    hi_c, lo_c = hi_clip.double(), lo_clip.double()
    n_hi = (n - i_hi).double()
    s1_hi = p1[:, -1:] - p1.gather(1, i_hi)
    s2_hi = p2[:, -1:] - p2.gather(1, i_hi)
    above = s2_hi - 2 * hi_c * s1_hi + hi_c * hi_c * n_hi
    s1_lo, s2_lo = p1.gather(1, i_lo), p2.gather(1, i_lo)
    below = s2_lo - 2 * lo_c * s1_lo + lo_c * lo_c * i_lo.double()
    return (above.clamp_min(0) + below.clamp_min(0)) * (1.0 - 1e-6)


def score_candidates(
    groups: Tensor,
    scales: Tensor,
    zero_points: Tensor,
    qmin: int,
    qmax: int,
    clipping_penalty: float,
    bias_penalty: float,
) -> Tensor:
    """The objective of each candidate: ``groups`` is ``(C, G, M)``, ``scales`` ``(C, K)``, ``zero_points`` ``(C,)``.

    Returns ``(C, K)``. ``G`` output-channel groups of ``M`` values each make one quantization channel.
    A value is clipped when it rounds outside the grid (the same rounding as the fake quantizer's).
    """
    c, g, m = groups.shape
    x = groups.reshape(c, 1, g * m)
    s = scales[:, :, None]
    zp = zero_points[:, None, None]
    r = x * (1.0 / s)  # (C, K, N), in grid steps
    q = torch.round(r)
    t = torch.clamp(q, qmin - zp, qmax - zp) if bool(zero_points.any()) else q.clamp(qmin, qmax)
    outside = (t != q) if clipping_penalty != 1.0 else None
    del q
    t.sub_(r)  # the error in grid steps
    score = torch.einsum("ckn,ckn->ck", t, t)
    if outside is not None:
        clipped = torch.where(outside, t, torch.zeros_like(t))
        score += (clipping_penalty - 1.0) * torch.einsum("ckn,ckn->ck", clipped, clipped)
    score *= scales.square()
    if bias_penalty != 0.0:
        shift = t.reshape(c, -1, g, m).sum(3) * s  # (C, K, G)
        score += bias_penalty * shift.square().sum(2)
    return score


def search_weight_range(
    channels: Tensor,
    bitwidth: int,
    symmetric: bool,
    clipping_penalty: float,
    bias_penalty: float,
    bias_groups: int = 1,
    num_steps: int = NUM_STEPS,
    max_elements: int = MAX_ELEMENTS,
) -> tuple[Tensor, Tensor]:
    """The best ``(lo, hi)`` per channel of ``channels`` (``(C, N)``, float): the grid of the chosen candidate.

    ``bias_groups`` splits each channel's ``N`` values into that many output-channel rows for the bias
    term (``N`` must be divisible by it; use it for per-tensor encodings).

    Exhaustive over the candidates, with one exact shortcut: a candidate's score is at least
    ``clipping_penalty`` x its clipping error (bounded below for all candidates from sorted values), so
    candidates whose clipping alone costs more than min-max's whole score are skipped; clipping
    error shrinks as the scale grows, so the rest is a run of the largest scales.
    """
    c = channels.detach().float()
    n_ch, n = c.shape
    if n % bias_groups:
        raise ValueError(f"{n} values per channel do not split into {bias_groups} bias groups")
    qmin, qmax = int_range(bitwidth, symmetric)
    if n == 0 or n_ch == 0:
        zeros = torch.zeros(n_ch, device=c.device)
        return zeros, zeros.clone()
    if symmetric:
        hi0 = c.abs().amax(1)
        lo0 = -hi0
    else:
        lo0 = c.amin(1).clamp(max=0.0)
        hi0 = c.amax(1).clamp(min=0.0)
    scales = candidate_scales(lo0, hi0, bitwidth, symmetric, num_steps)  # (C, K); the last is min-max's
    if symmetric:
        zps = torch.zeros(n_ch, device=c.device)
    else:
        zps = torch.clamp(torch.round(-lo0 / scales[:, num_steps - 1]), qmin, qmax)
    n_cand = scales.shape[1]
    groups = c.reshape(n_ch, bias_groups, n // bias_groups)
    sorted_x = c.sort(1).values
    xd = sorted_x.double()
    zero = torch.zeros(n_ch, 1, dtype=torch.float64, device=c.device)
    prefix = (torch.cat([zero, xd.cumsum(1)], 1), torch.cat([zero, (xd * xd).cumsum(1)], 1))
    clip_lb = clipping_lower_bound(sorted_x, prefix, (qmin - zps)[:, None] * scales, (qmax - zps)[:, None] * scales, scales)
    best = torch.empty(n_ch, dtype=torch.long, device=c.device)
    ch_chunk = max(1, max_elements // (n_cand * n))
    kw = (qmin, qmax, clipping_penalty, bias_penalty)
    for start in range(0, n_ch, ch_chunk):
        sl = slice(start, min(n_ch, start + ch_chunk))
        ref = score_candidates(groups[sl], scales[sl, -1:], zps[sl], *kw)[:, 0]
        # candidates [first, n_cand - 1) can beat min-max only where their clipping costs less than its score
        hopeless = clipping_penalty * clip_lb[sl, :-1] > ref[:, None]
        first = hopeless.int().cumprod(1).sum(1)  # leading hopeless ones (clipping error falls with the scale)
        width = int((n_cand - 1 - first).max())
        scores = torch.full((sl.stop - sl.start, n_cand), math.inf, device=c.device)
        scores[:, -1] = ref
        if width > 0:
            idx = (first[:, None] + torch.arange(width, device=c.device)[None, :]).clamp_max(n_cand - 2)
            cand_chunk = max(1, min(width, max_elements // max(1, (sl.stop - sl.start) * n)))
            for k0 in range(0, width, cand_chunk):
                part = idx[:, k0 : k0 + cand_chunk]
                sc = score_candidates(groups[sl], scales[sl].gather(1, part), zps[sl], *kw)
                scores.scatter_(1, part, sc)
        scores = torch.where(torch.isnan(scores), torch.full_like(scores, math.inf), scores)
        best[sl] = torch.argmin(scores, 1)
    scale = scales.gather(1, best[:, None])[:, 0]
    if symmetric:  # the grid [qmin, qmax] * scale; its encoding is the one of [-qmax, qmax] * scale
        return -qmax * scale, qmax * scale
    return (qmin - zps) * scale, (qmax - zps) * scale
