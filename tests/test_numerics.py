"""The shared numeric helpers in ``aq_search._numerics``."""

import math

import torch

from aq_search._numerics import channel_shape, pareto_front, signal_and_noise, sqnr_db
from aq_search.search._pipeline import output_sqnr


def test_channel_shape_broadcasts_along_the_axis() -> None:
    assert channel_shape(4, 0) == [-1, 1, 1, 1]
    assert channel_shape(2, 1) == [1, -1]
    assert channel_shape(3, None) == [1, 1, 1]
    scale = torch.tensor([1.0, 2.0, 3.0])
    assert torch.equal(torch.ones(2, 3, 4) * scale.reshape(channel_shape(3, 1)), scale.reshape(1, 3, 1).expand(2, 3, 4))


def test_sqnr_matches_the_search_stage_formula() -> None:
    g = torch.Generator().manual_seed(0)
    ref = [torch.randn(8, 10, generator=g), torch.randn(3, 5, generator=g)]
    out = [r + 0.01 * torch.randn(r.shape, generator=g) for r in ref]
    signal, noise = signal_and_noise(ref, out)
    assert signal == sum(float(r.pow(2).sum()) for r in ref)
    assert sqnr_db(signal, noise) == output_sqnr(ref, out)
    assert 30.0 < sqnr_db(signal, noise) < 50.0  # noise 1% of a unit-variance signal: about 40 dB
    assert sqnr_db(*signal_and_noise(ref, ref)) == math.inf
    assert sqnr_db(1.0, math.nan) == -math.inf and sqnr_db(1.0, math.inf) == -math.inf


def test_pareto_front_keeps_the_undominated_points_by_increasing_cost() -> None:
    points = [(0.5, 0.9), (0.25, 0.8), (0.5, 0.7), (1.0, 0.9), (0.75, 0.95), (0.25, 0.8)]
    assert pareto_front(points, key=lambda p: p) == [(0.25, 0.8), (0.5, 0.9), (0.75, 0.95)]
    tagged = [("a", 1.0, 0.5), ("b", 1.0, 0.5), ("c", 0.5, 0.4)]
    assert [t[0] for t in pareto_front(tagged, key=lambda t: (t[1], t[2]))] == ["c", "a"]  # ties: first kept
    assert pareto_front([], key=lambda p: p) == []
