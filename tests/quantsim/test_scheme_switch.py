"""``set_quant_scheme`` recomputes only the side whose scheme changes (scheme selection relies on it)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aq_search import QuantSim


def _sim() -> QuantSim:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(32, 8)
    sim = QuantSim(model, x[:1], param_quant_scheme="tf_enhanced", activation_quant_scheme="tf_enhanced", per_channel=True)
    sim.compute_encodings(lambda m: m(x))
    return sim


def test_same_scheme_keeps_encodings_and_a_new_one_recomputes(monkeypatch: pytest.MonkeyPatch) -> None:
    sim = _sim()
    calls = {"params": 0, "acts": 0}
    params, acts = sim.compute_param_encodings, sim._compute_activation_encodings

    def count_params() -> None:
        calls["params"] += 1
        params()

    def count_acts() -> None:
        calls["acts"] += 1
        acts()

    monkeypatch.setattr(sim, "compute_param_encodings", count_params)
    monkeypatch.setattr(sim, "_compute_activation_encodings", count_acts)
    sim.set_quant_scheme(param_scheme="tf_enhanced", activation_scheme="tf")
    assert calls == {"params": 0, "acts": 1}
    before = sim.param_quantizer("0").scale.clone()
    sim.set_quant_scheme(param_scheme="tf", activation_scheme="tf")
    assert calls == {"params": 1, "acts": 1}
    assert not torch.equal(sim.param_quantizer("0").scale, before)  # min-max ranges differ from tf_enhanced's
    fresh = _sim()
    fresh.set_quant_scheme(param_scheme="tf", activation_scheme="tf")
    assert torch.equal(sim.param_quantizer("0").scale, fresh.param_quantizer("0").scale)
