from __future__ import annotations

import pytest
import torch

from aq_search import InvalidInputError
from aq_search.quantsim import (
    FakeQuantizer,
    PercentileEstimator,
    RangeStats,
    make_range_estimator,
)


def _heavy_tailed(n: int = 200_000, seed: int = 0) -> torch.Tensor:
    """Laplace-distributed values with a few large outliers, as activations often are."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g) - 0.5
    x = -torch.sign(u) * torch.log1p(-2 * u.abs())
    idx = torch.randperm(n, generator=g)[: n // 5000]
    x[idx] = torch.randn(len(idx), generator=g) * 40
    return x


def _activation_mse(scheme: str, x: torch.Tensor, bits: int = 8, batches: int = 4) -> tuple[float, FakeQuantizer]:
    q = FakeQuantizer(kind="activation", bitwidth=bits, scheme=scheme)
    q.start_observing()
    for chunk in x.chunk(batches):
        q(chunk)
    q.stop_observing()
    q.compute_encoding()
    return float(((q(x) - x) ** 2).mean()), q


@pytest.mark.parametrize(("bits", "ratio"), [(4, 0.3), (8, 0.8)])
def test_sqnr_and_mse_beat_minmax_on_heavy_tails(bits: int, ratio: float) -> None:
    """Measured: 4 bits tf 2.01 / tf_enhanced 0.53 / mse 0.47; 8 bits 0.081 / 0.063 / 0.056 (MSE)."""
    x = _heavy_tailed()
    tf, _ = _activation_mse("tf", x, bits)
    enhanced, _ = _activation_mse("tf_enhanced", x, bits)
    mse, _ = _activation_mse("mse", x, bits)
    assert enhanced < ratio * tf
    assert mse < ratio * tf
    # mse optimizes exactly this objective; tf_enhanced penalizes clipping so clips less
    assert mse <= enhanced * 1.05


def test_tf_enhanced_clips_less_than_mse() -> None:
    x = _heavy_tailed()
    _, q_enh = _activation_mse("tf_enhanced", x, 8)
    _, q_mse = _activation_mse("mse", x, 8)
    assert q_enh.scale is not None and q_mse.scale is not None
    assert float(q_enh.scale) >= float(q_mse.scale)


@pytest.mark.parametrize("pct", [99.9, 99.99])
def test_percentile_clips_the_tails(pct: float) -> None:
    x = _heavy_tailed()
    _, q = _activation_mse(f"percentile:{pct}", x)
    lo_true, hi_true = torch.quantile(x, torch.tensor([1 - pct / 100, pct / 100], dtype=torch.float32))
    hi = float((q.quant_range[1] - q.zero_point) * q.scale)  # type: ignore[operator]
    lo = float((q.quant_range[0] - q.zero_point) * q.scale)  # type: ignore[operator]
    assert hi < float(x.max()) / 2, "percentile must clip the outliers"
    # the histogram estimate is close to the exact quantile (within a few bins of the grid)
    assert hi == pytest.approx(float(hi_true), rel=0.1, abs=0.05)
    assert lo == pytest.approx(float(lo_true), rel=0.1, abs=0.05)
    clipped = float(((x > hi) | (x < lo)).float().mean())
    assert clipped == pytest.approx(2 * (1 - pct / 100), rel=0.5)


def test_histogram_widening_keeps_counts_and_shape() -> None:
    g = torch.Generator().manual_seed(1)
    stats = RangeStats(num_bins=512)
    data = [torch.randn(10_000, generator=g) * s for s in (0.5, 1.0, 3.0)]
    for d in data:
        stats.update(d)
    assert stats.hist is not None
    allx = torch.cat(data)
    assert float(stats.hist.sum()) == pytest.approx(allx.numel())
    assert stats.min == float(allx.min()) and stats.max == float(allx.max())
    # the median estimated from the re-binned histogram is near the true median
    est = PercentileEstimator(50.000001).activation_range(stats, 8, False)[1]
    assert est == pytest.approx(float(allx.median()), abs=0.1)


def test_param_ranges_per_channel() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 4096, generator=g) * torch.arange(1, 9, dtype=torch.float32)[:, None]
    w[3, 5] = 400.0  # one huge outlier in channel 3
    lo, hi = make_range_estimator("tf").param_range(w, 0, 8, True)
    assert hi.shape == (8,) and float(hi[3]) == 400.0 and torch.equal(lo, -hi)
    q_tf = FakeQuantizer(kind="param", bitwidth=4, scheme="tf", axis=0)
    q_mse = FakeQuantizer(kind="param", bitwidth=4, scheme="mse", axis=0)
    q_enh = FakeQuantizer(kind="param", bitwidth=4, scheme="tf_enhanced", axis=0)
    errors = {}
    for name, q in (("tf", q_tf), ("mse", q_mse), ("tf_enhanced", q_enh)):
        q.compute_encoding(w)
        with torch.no_grad():
            errors[name] = ((q(w) - w) ** 2).sum(1)
    # per channel, the searched ranges are never worse than min-max, and clearly better overall at 4 bits
    assert bool((errors["mse"] <= errors["tf"] * 1.0001).all())
    gaussian = [c for c in range(8) if c != 3]
    assert float((errors["mse"][gaussian] / errors["tf"][gaussian]).mean()) < 0.8
    assert float((errors["tf_enhanced"][gaussian] / errors["tf"][gaussian]).mean()) < 0.9
    assert q_enh.scale is not None and q_mse.scale is not None
    assert bool((q_enh.scale >= q_mse.scale * 0.999).all()), "clipping is penalized: tf_enhanced clips no more than mse"
    _, hi_p = make_range_estimator("percentile", percentile=90.0).param_range(w, None, 8, True)
    assert hi_p.shape == (1,) and float(hi_p) < float(w.abs().max())


def test_unknown_scheme_lists_valid_ones() -> None:
    with pytest.raises(InvalidInputError, match="tf, tf_enhanced, percentile, mse"):
        make_range_estimator("minmaxx")
    with pytest.raises(InvalidInputError, match="percentile"):
        make_range_estimator("percentile:abc")
    with pytest.raises(InvalidInputError, match="'percentile' parameter"):
        PercentileEstimator(120.0)
    assert make_range_estimator("post_training_tf_enhanced").name == "tf_enhanced"
