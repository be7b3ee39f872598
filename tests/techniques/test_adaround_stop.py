"""AdaRound's early stop keeps the best hard rounding seen and stops once the loss stops improving."""

from __future__ import annotations

import torch
from torch import nn

from aq_search import AdaRoundParams, QuantSim
from aq_search.techniques import _adaround_stop, apply_adaround
from aq_search.techniques._adaround_stop import EarlyStop, check_interval


def test_early_stop_returns_the_best_rounding_and_stops_after_patience() -> None:
    losses = iter([5.0, 3.0, 3.5, 3.2, 3.1, 0.0])
    roundings = [torch.full((2,), i, dtype=torch.uint8) for i in range(6)]
    seen: dict[int, float] = {}

    def loss_of(hard: torch.Tensor) -> float:
        key = int(hard[0])
        if key not in seen:
            seen[key] = next(losses)
        return seen[key]

    stop = EarlyStop(loss_of, patience=3)
    decisions = [stop.check(r) for r in roundings[:5]]
    assert decisions == [False, False, False, False, True]  # 3.5, 3.2, 3.1: three checks without improving on 3.0
    assert torch.equal(stop.result(roundings[4]), roundings[1])  # the best seen (3.0), not the last (3.1)
    assert check_interval(10_000) == 250 and check_interval(100) == 25


def test_adaround_stops_early_on_a_layer_whose_rounding_stops_improving(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    data = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    checks: list[int] = []
    original = EarlyStop.check

    def counting(self: EarlyStop, hard: torch.Tensor) -> bool:
        checks.append(1)
        return original(self, hard)

    monkeypatch.setattr(_adaround_stop.EarlyStop, "check", counting)
    iterations = 4000
    sim = QuantSim(net, data[0], default_param_bw=4)
    sim.compute_encodings(lambda m: [m(x) for x in data])
    apply_adaround(sim, data, AdaRoundParams(num_batches=2, num_iterations=iterations, early_stop_patience=2), seed=0)
    # two layers, (1 - warm_start) * iterations / interval = 32 checks each without a stop
    full = 2 * int(0.8 * iterations / check_interval(iterations))
    assert 0 < len(checks) < full
