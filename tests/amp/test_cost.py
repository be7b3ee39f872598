from __future__ import annotations

import pytest
import torch
from torch import nn

from aq_search import QuantSim
from aq_search.amp import CostTable, find_quantizer_groups, layer_costs, parse_candidates

from .conftest import ConvLinear, calibrated

W8A8, W4A8, W8A16, W4A4 = parse_candidates(["w8a8", "w4a8", "w8a16", "w4a4"])


def _table(sim: QuantSim) -> CostTable:
    return CostTable(sim, find_quantizer_groups(sim), [W8A8, W4A8, W8A16, W4A4])


def test_macs_by_hand() -> None:
    sim = QuantSim(ConvLinear(), torch.randn(1, 3, 8, 8))
    costs = layer_costs(sim)
    assert costs["conv"].macs == 8 * 6 * 6 * 3 * 3 * 3 == 7776
    assert costs["fc"].macs == 10 * 288 == 2880
    assert costs["conv"].params == 216
    assert costs["fc"].params == 2880


def test_bops_by_hand() -> None:
    sim = QuantSim(ConvLinear(), torch.randn(1, 3, 8, 8))
    table = _table(sim)
    assert [g.name for g in table.groups] == ["conv", "fc"]
    assert table.cost({"conv": W8A8, "fc": W8A8}) == 7776 * 64 + 2880 * 64 == 681_984
    assert table.cost({"conv": W4A8, "fc": W8A8}) == 7776 * 32 + 2880 * 64 == 433_152
    assert table.cost({"conv": W8A16, "fc": W4A4}) == 7776 * 128 + 2880 * 16 == 1_041_408
    # relative to every group at its highest-cost candidate (w8a16 here)
    assert table.baseline() == {"conv": W8A16, "fc": W8A16}
    assert table.relative({"conv": W8A8, "fc": W8A8}) == pytest.approx(0.5)
    assert table.relative({"conv": W4A8, "fc": W8A16}) == pytest.approx((7776 * 32 + 2880 * 128) / ((7776 + 2880) * 128))
    assert table.layer_bops({"conv": W4A8, "fc": W4A4}) == {"conv": 7776 * 32, "fc": 2880 * 16}


def test_size_by_hand() -> None:
    sim = QuantSim(ConvLinear(), torch.randn(1, 3, 8, 8))
    table = _table(sim)
    assert table.cost({"conv": W8A8, "fc": W8A8}, "size") == (216 + 2880) * 8
    assert table.cost({"conv": W4A8, "fc": W8A16}, "size") == 216 * 4 + 2880 * 8
    # activations do not count in size: w8a8 and w8a16 tie, the tie goes to more bits
    assert table.baseline("size") == {"conv": W8A16, "fc": W8A16}
    assert table.relative({"conv": W4A4, "fc": W4A4}, "size") == pytest.approx(0.5)


def test_macs_of_transpose_depthwise_and_batch() -> None:
    net = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=4), nn.ConvTranspose2d(8, 6, 3, stride=2), nn.Conv1d(6, 2, 1))
    x = torch.randn(2, 4, 5, 5)

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.net[1](self.net[0](x))
            return self.net[2](y.flatten(2))

    sim = QuantSim(Wrap(), x)
    costs = layer_costs(sim)
    assert costs["net.0"].macs == 2 * 8 * 5 * 5 * (4 // 4) * 9  # grouped conv: in_channels / groups
    assert costs["net.1"].macs == 2 * 8 * 5 * 5 * 6 * 9  # transpose: input elements x out_channels x kernel
    assert costs["net.2"].macs == 2 * 2 * 121 * 6


def test_float_tensors_count_32_bits() -> None:
    sim = QuantSim(ConvLinear(), torch.randn(1, 3, 8, 8))
    sim.set_enabled("fc", param=False)  # fc weights stay float
    table = _table(sim)
    assert table.cost({"conv": W4A8, "fc": W4A8}) == 7776 * 32 + 2880 * 32 * 8
    sim.set_enabled("conv", output=False)  # fc's input stays float too
    table = _table(sim)
    assert table.cost({"conv": W4A8, "fc": W4A8}) == 7776 * 32 + 2880 * 32 * 32


def test_embedding_costs_no_bops_but_size() -> None:
    class Emb(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(50, 8)
            self.fc = nn.Linear(8, 3)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.fc(self.emb(ids))

    ids = torch.randint(0, 50, (2, 5))
    sim = calibrated(Emb(), ids)
    costs = layer_costs(sim)
    assert costs["emb"].macs == 0
    assert costs["fc"].macs == 1 * 5 * 3 * 8  # one pass of the dummy input (batch 1)
    table = _table(sim)
    assert table.cost({"emb": W4A8, "fc": W8A8}, "size") == 400 * 4 + 24 * 8
