"""Small models with hand-checkable structure, and the digits case for real-number AMP runs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from aq_search import QuantSim
from aq_search.examples.digits import DigitsCase, digits_case

try:
    from aq_search.techniques import fold_all_batch_norms
except ImportError:  # the techniques package is landing in parallel
    from aq_search.techniques._bn_fold import fold_all_batch_norms


class ConvLinear(nn.Module):
    """Conv2d 3->8 k3 on 8x8 (6x6 out), then Linear 288 -> 10: MACs 7776 and 2880 per sample."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(288, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.conv(x)))


class ResidualTwoHeads(nn.Module):
    """A residual add whose output feeds two convs (head_a, head_b)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.head_a = nn.Conv2d(8, 4, 1)
        self.head_b = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.relu(self.stem(x))
        r = s + self.body(s)
        return self.head_a(r) * self.head_b(r)


class ConcatNet(nn.Module):
    """Two branches concatenated, then a conv: relu_a feeds conv_b and the concat; relu_b feeds the concat."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1)
        self.relu_a = nn.ReLU()
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1)
        self.relu_b = nn.ReLU()
        self.conv_c = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.relu(self.stem(x))
        a = self.relu_a(self.conv_a(s))
        b = self.relu_b(self.conv_b(a))
        return self.conv_c(torch.cat([a, b], dim=1))


def calibrated(model: nn.Module, x: torch.Tensor, **kwargs: object) -> QuantSim:
    sim = QuantSim(model.eval(), x[:1], **kwargs)  # type: ignore[arg-type]
    sim.compute_encodings([x])
    return sim


def output_fidelity(reference_model: nn.Module, x: torch.Tensor) -> Callable[[nn.Module, int | None], float]:
    """A real metric for models without labels: minus the relative output error against FP32 (0 is perfect)."""
    with torch.no_grad():
        ref = reference_model(x)

    def evaluate(model: nn.Module, num_samples: int | None = None) -> float:
        n = len(x) if num_samples is None else num_samples
        out = model(x[:n])
        return -float((out - ref[:n]).pow(2).sum() / ref[:n].pow(2).sum())

    return evaluate


@pytest.fixture(scope="session")
def digits(request: pytest.FixtureRequest) -> DigitsCase:
    return digits_case(request.config.cache.mkdir("aq_search_digits"))


@pytest.fixture(scope="session")
def folded_digits(digits: DigitsCase) -> nn.Module:
    return fold_all_batch_norms(digits.model, digits.dummy_input)


def digits_sim(digits: DigitsCase, folded: nn.Module, *, per_channel: bool) -> QuantSim:
    """The BN-folded digits CNN at W8A8 with min-max ranges, calibrated."""
    sim = QuantSim(
        folded, digits.dummy_input, quant_scheme="tf", default_param_bw=8, default_output_bw=8, per_channel=per_channel
    )
    sim.compute_encodings(digits.calibration_batches)
    return sim
