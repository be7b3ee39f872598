from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aq_search.quantsim import FakeQuantizer, encoding_from_range, int_range, quantize_dequantize


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 16), symmetric=st.booleans(), seed=st.integers(0, 10_000), spread=st.floats(0.01, 100.0))
def test_per_tensor_matches_torch_exactly(bits: int, symmetric: bool, seed: int, spread: float) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2000, generator=g) * spread
    lo, hi = torch.tensor([float(x.min()) * 0.8]), torch.tensor([float(x.max()) * 0.7])
    scale, zp = encoding_from_range(lo, hi, bits, symmetric)
    qmin, qmax = int_range(bits, symmetric)
    ours = quantize_dequantize(x, scale, zp, qmin, qmax)
    theirs = torch.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax)
    assert torch.equal(ours, theirs)


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 16), symmetric=st.booleans(), seed=st.integers(0, 10_000), axis=st.integers(0, 1))
def test_per_channel_matches_torch_exactly(bits: int, symmetric: bool, seed: int, axis: int) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 7, 3, generator=g) * torch.rand(6, 7, 1, generator=g) * 4
    channels = w.movedim(axis, 0).reshape(w.shape[axis], -1)
    scale, zp = encoding_from_range(channels.amin(1) * 0.9, channels.amax(1) * 0.9, bits, symmetric)
    qmin, qmax = int_range(bits, symmetric)
    ours = quantize_dequantize(w, scale, zp, qmin, qmax, axis=axis)
    theirs = torch.fake_quantize_per_channel_affine(w, scale, zp, axis, qmin, qmax)
    assert torch.equal(ours, theirs)


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(2, 16), symmetric=st.booleans(), seed=st.integers(0, 10_000))
def test_quantizer_fast_paths_match_torch(bits: int, symmetric: bool, seed: int) -> None:
    """The quantizer's own CPU fast path (per channel, no grad) equals the fused kernel bit for bit."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(5, 4, 3, 3, generator=g)
    q = FakeQuantizer(kind="param", bitwidth=bits, symmetric=symmetric, scheme="tf", axis=0)
    q.compute_encoding(w)
    assert q.scale is not None and q.zero_point is not None
    qmin, qmax = q.quant_range
    with torch.no_grad():
        fast = q(w)
    assert torch.equal(fast, torch.fake_quantize_per_channel_affine(w, q.scale, q.zero_point, 0, qmin, qmax))

    a = FakeQuantizer(kind="activation", bitwidth=bits, scheme="tf")
    a.start_observing()
    a(w)
    a.stop_observing()
    a.compute_encoding()
    assert a.scale is not None and a.zero_point is not None
    assert torch.equal(a(w), torch.fake_quantize_per_tensor_affine(w, a.scale, a.zero_point, *a.quant_range))


def test_encoding_contains_zero_and_range() -> None:
    scale, zp = encoding_from_range(torch.tensor([0.5]), torch.tensor([3.0]), 8, False)
    # the range is widened to include 0, and 0 maps exactly to the zero point
    assert int(zp) == 0
    assert torch.allclose(scale, torch.tensor([3.0 / 255]))
    scale, zp = encoding_from_range(torch.tensor([-1.0]), torch.tensor([3.0]), 8, False)
    x = torch.tensor([0.0])
    assert float(quantize_dequantize(x, scale, zp, 0, 255)) == 0.0
    sym_scale, sym_zp = encoding_from_range(torch.tensor([-2.0]), torch.tensor([1.0]), 4, True)
    assert int(sym_zp) == 0 and torch.allclose(sym_scale, torch.tensor([2.0 / 7]))


def test_fused_relu6_clamp_is_exact() -> None:
    """A ReLU6 folded into the quantizer gives exactly fq(relu6(x))."""
    x = torch.linspace(-10, 10, 10001)
    q = FakeQuantizer(kind="activation", bitwidth=8, scheme="tf")
    q.start_observing()
    q(torch.clamp(x, 0, 6) * 1.3)
    q.stop_observing()
    q.compute_encoding()
    expected = q(torch.clamp(x, 0.0, 6.0))
    q.fused_clamp = (0.0, 6.0)
    assert torch.equal(q(x), expected)


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_large_activation_chunked_path_is_exact(bits: int) -> None:
    """Large tensors take the chunked in-place path; ties (x exactly between two steps) included."""
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(3, 40, 64, 64, generator=g) * 3
    q = FakeQuantizer(kind="activation", bitwidth=bits, scheme="tf")
    q.start_observing()
    q(x)
    q.stop_observing()
    q.compute_encoding()
    assert q.scale is not None and q.zero_point is not None
    x.view(-1)[:1000] = (torch.arange(1000) - 500 + 0.5) * q.scale  # exact ties
    with torch.no_grad():
        ours = q(x)
    assert torch.equal(ours, torch.fake_quantize_per_tensor_affine(x, q.scale, q.zero_point, *q.quant_range))
