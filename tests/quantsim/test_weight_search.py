"""The tf_enhanced weight range search (``_weight_search``): structural checks, machine-independent."""

from __future__ import annotations

import math

import pytest
import torch

from aq_search import InvalidInputError
from aq_search.quantsim import FakeQuantizer, SqnrEstimator, make_range_estimator
from aq_search.quantsim._fake_quant import encoding_from_range, int_range
from aq_search.quantsim._weight_search import candidate_scales, score_candidates, search_weight_range


def _objective(row: torch.Tensor, scale: float, zp: float, bits: int, sym: bool, cp: float, bp: float, groups: int = 1) -> float:
    """The stated objective, written out for one channel (the fake quantizer's rounding: x * (1 / scale))."""
    qmin, qmax = int_range(bits, sym)
    q = torch.round(row * (1.0 / torch.tensor(scale))) + zp
    qc = q.clamp(qmin, qmax)
    err = (qc - zp) * scale - row
    sq = err.square()
    return float(sq.sum() + (cp - 1.0) * sq[q != qc].sum() + bp * err.reshape(groups, -1).sum(1).square().sum())


def _zero_point(row: torch.Tensor, bits: int, sym: bool) -> float:
    if sym:
        return 0.0
    qmin, qmax = int_range(bits, sym)
    lo0, hi0 = row.min().clamp(max=0), row.max().clamp(min=0)
    return float(torch.clamp(torch.round(-lo0 / ((hi0 - lo0) / (qmax - qmin))), qmin, qmax))


def _chosen(lo: torch.Tensor, hi: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    scale, zp = encoding_from_range(lo, hi, bits, sym)
    return scale, zp.float()


def _data(seed: int, channels: int = 6, n: int = 72, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(channels, n, generator=g) * (0.05 + torch.rand(channels, 1, generator=g)) + shift
    c[0, 3] = 5.0  # an outlier: clipping it is tempting
    return c


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("bp", [0.0, 1.0, 4.0])
def test_matches_a_brute_force_loop(bits: int, sym: bool, bp: float) -> None:
    c = _data(bits * 10 + int(sym), shift=0.0 if sym else 0.3)
    lo, hi = search_weight_range(c, bits, sym, 3.0, bp)
    scale, zp = _chosen(lo, hi, bits, sym)
    for i, row in enumerate(c):
        z = _zero_point(row, bits, sym)
        assert float(zp[i]) == z
        lo0, hi0 = (-row.abs().max(), row.abs().max()) if sym else (row.min().clamp(max=0), row.max().clamp(min=0))
        cands = candidate_scales(lo0[None], hi0[None], bits, sym)[0].tolist()
        brute, best = min((_objective(row, s, z, bits, sym, 3.0, bp), s) for s in cands)
        got = _objective(row, float(scale[i]), z, bits, sym, 3.0, bp)
        # the same candidate, or (near-ties; the encoding's scale is the candidate's up to float rounding) as good
        assert float(scale[i]) == pytest.approx(best, rel=1e-5) or got <= brute * (1 + 1e-3) + 1e-12


def test_never_worse_than_min_max_nor_any_candidate() -> None:
    g = torch.Generator().manual_seed(3)
    u = torch.rand(16, 300, generator=g) - 0.5
    c = -torch.sign(u) * torch.log1p(-2 * u.abs())  # Laplace: heavy tails, clipping pays at 4 bits
    for bits in (3, 4, 8):
        qmin, qmax = int_range(bits, True)
        _, hi = search_weight_range(c, bits, True, 3.0, 1.0)
        scale = hi / qmax
        hi0 = c.abs().amax(1)
        cands = candidate_scales(-hi0, hi0, bits, True)  # the last one is min-max's
        all_scores = score_candidates(c[:, None, :], cands, torch.zeros(16), qmin, qmax, 3.0, 1.0)
        chosen = score_candidates(c[:, None, :], scale[:, None], torch.zeros(16), qmin, qmax, 3.0, 1.0)[:, 0]
        assert bool((chosen <= all_scores.amin(1) * (1 + 1e-5)).all())
        minmax_scale = hi0 / qmax
        assert torch.allclose(cands[:, -1], minmax_scale)


def test_chunking_does_not_change_the_result() -> None:
    c = _data(7, channels=10, n=200)
    ref = search_weight_range(c, 4, True, 3.0, 1.0)
    for budget in (1, 500, 5000):  # channel chunks of one, candidate chunks
        got = search_weight_range(c, 4, True, 3.0, 1.0, max_elements=budget)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    flat = c.reshape(1, -1)
    ref_t = search_weight_range(flat, 4, False, 3.0, 1.0, bias_groups=10)
    got_t = search_weight_range(flat, 4, False, 3.0, 1.0, bias_groups=10, max_elements=300)
    assert torch.equal(ref_t[0], got_t[0]) and torch.equal(ref_t[1], got_t[1])


@pytest.mark.parametrize("sym", [True, False])
def test_zero_and_constant_channels(sym: bool) -> None:
    c = torch.zeros(3, 16)
    c[1] = 0.5
    c[2] = -0.25
    lo, hi = search_weight_range(c, 4, sym, 3.0, 1.0)
    assert bool(torch.isfinite(lo).all() and torch.isfinite(hi).all())
    assert bool((lo <= 0).all() and (hi >= 0).all())
    q = FakeQuantizer(kind="param", bitwidth=4, scheme="tf_enhanced", axis=0, symmetric=sym)
    q.compute_encoding(c)
    with torch.no_grad():
        out = q(c)
    assert torch.equal(out[0], c[0])  # zeros stay zeros
    tf = FakeQuantizer(kind="param", bitwidth=4, scheme="tf", axis=0, symmetric=sym)
    tf.compute_encoding(c)
    with torch.no_grad():
        err_tf = (tf(c) - c).abs().sum(1)
    assert bool(((out - c).abs().sum(1) <= err_tf + 1e-6).all())


def test_symmetric_and_asymmetric_ranges_reproduce_the_chosen_grid() -> None:
    w = _data(11, channels=4, n=50, shift=0.2).reshape(4, 2, 5, 5)
    est = SqnrEstimator()
    lo, hi = est.param_range(w, 0, 4, True)
    assert lo.shape == (4,) and torch.equal(lo, -hi)
    lo_a, hi_a = est.param_range(w, 0, 4, False)
    scale, zp = encoding_from_range(lo_a, hi_a, 4, False)
    qmin, qmax = int_range(4, False)
    assert torch.allclose((qmin - zp) * scale, lo_a, atol=1e-6) and torch.allclose((qmax - zp) * scale, hi_a, atol=1e-6)


def test_per_tensor_uses_output_channel_rows_for_the_bias_term() -> None:
    w = _data(5, channels=8, n=18).reshape(8, 2, 3, 3)
    lo, hi = SqnrEstimator(bias_penalty=2.0).param_range(w, None, 4, True)
    assert lo.shape == (1,) and hi.shape == (1,)
    ref = search_weight_range(w.reshape(1, -1), 4, True, 3.0, 2.0, bias_groups=8)
    assert torch.equal(hi, ref[1])
    flat = torch.randn(40)  # 1-d (a bias vector): one group
    lo1, hi1 = SqnrEstimator().param_range(flat, None, 8, False)
    assert lo1.shape == (1,) and float(lo1) <= float(flat.min()) * 0.5 and float(hi1) > 0


def test_mse_is_the_plain_mean_squared_error_search() -> None:
    est = make_range_estimator("mse")
    assert isinstance(est, SqnrEstimator) and est.clipping_penalty == 1.0 and est.bias_penalty == 0.0
    c = _data(2, channels=5, n=100)
    _, hi = est.param_range(c, 0, 4, True)
    scale = hi / int_range(4, True)[1]
    for i, row in enumerate(c):
        cands = candidate_scales(-row.abs().max()[None], row.abs().max()[None], 4, True)[0].tolist()
        best = min(float(((torch.round(row * (1 / torch.tensor(s))).clamp(-8, 7) * s - row) ** 2).sum()) for s in cands)
        got = float(((torch.round(row * (1 / scale[i])).clamp(-8, 7) * scale[i] - row) ** 2).sum())
        assert got <= best * (1 + 1e-5)


def test_bias_penalty_is_validated_and_recorded() -> None:
    with pytest.raises(InvalidInputError, match="bias_penalty"):
        SqnrEstimator(bias_penalty=-1.0)
    with pytest.raises(InvalidInputError, match="bias_penalty"):
        SqnrEstimator(bias_penalty=math.nan)
    assert SqnrEstimator(bias_penalty=0.5).to_dict()["bias_penalty"] == 0.5
    assert SqnrEstimator(bias_penalty=0.5) != SqnrEstimator(bias_penalty=1.0)
