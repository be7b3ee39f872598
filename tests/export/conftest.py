"""Fixtures for the export tests: the digits case and small models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from aq_search.examples.digits import DigitsCase, digits_case

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed: pip install 'aq-search[onnx]'")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install 'aq-search[onnx]'")


@pytest.fixture(scope="session")
def digits(request: pytest.FixtureRequest) -> DigitsCase:
    return digits_case(request.config.cache.mkdir("aq_search_digits"))


class Digamma(nn.Module):
    """A layer ONNX has no op for (``aten::digamma``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.digamma(x.abs() + 1.0)


class WithDigamma(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = Digamma()
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).flatten(1))


class FunctionalDigamma(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.digamma(self.conv(x).abs() + 1.0)


class TwoInputs(nn.Module):
    """Two inputs, a tuple and dict output, an unquantizable-free mix of ops."""

    def __init__(self) -> None:
        super().__init__()
        self.fa = nn.Linear(6, 4)
        self.fb = nn.Linear(3, 4)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ya, yb = self.fa(a), self.fb(b)
        return ya * yb, {"sum": ya + yb, "gate": torch.sigmoid(ya)}
