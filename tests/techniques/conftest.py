"""Small fixture models for the technique tests, with non-trivial BatchNorm statistics."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn


def randomize_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm running statistics and affine parameters far from the identity; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.rand(c, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.2)
                if m.weight is not None:
                    m.weight.copy_(
                        (torch.rand(c, generator=g) * 2 + 0.3) * torch.where(torch.rand(c, generator=g) < 0.2, -1.0, 1.0)
                    )
                    m.bias.copy_(torch.rand(c, generator=g) * 2 - 0.5)
    return model.eval()


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.head(torch.relu(x + y)).mean((2, 3))


class Depthwise(nn.Module):
    """MobileNet/EfficientNet-Lite style: ReLU6, zero padding as a separate module before the depthwise conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.act0 = nn.ReLU6()
        self.pad = nn.ZeroPad2d(1)
        self.dw = nn.Conv2d(16, 16, 3, stride=2, groups=16, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.act1 = nn.ReLU6()
        self.pw = nn.Conv2d(16, 8, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act0(self.bn0(self.conv(x)))
        x = self.act1(self.bn1(self.dw(self.pad(x))))
        x = self.bn2(self.pw(x))
        return self.fc(x.mean((2, 3)))


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1, groups=2)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, groups=4)
        self.bn2 = nn.BatchNorm2d(12)
        self.conv3 = nn.Conv2d(12, 6, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.conv3(x)


class LinearBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, 16)
        self.bn1 = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 12, bias=False)
        self.bn2 = nn.BatchNorm1d(12)
        self.fc3 = nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.fc1(x)))
        x = torch.relu(self.bn2(self.fc2(x)))
        return self.fc3(x)


class MultiInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc_v = nn.Linear(5, 8)
        self.bn_v = nn.BatchNorm1d(8)
        self.out = nn.Linear(16, 3)

    def forward(self, image: Tensor, vector: Tensor) -> Tensor:
        a = torch.relu(self.bn(self.conv(image))).mean((2, 3))
        b = torch.relu(self.bn_v(self.fc_v(vector)))
        return self.out(torch.cat([a, b], dim=1))


class ConvTransposeBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up1 = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.bn1 = nn.BatchNorm2d(6)
        self.up2 = nn.ConvTranspose2d(6, 4, 2, stride=2, bias=False)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn2(self.up2(torch.relu(self.bn1(self.up1(x)))))


class BNFirst(nn.Module):
    """BatchNorms before the layer (folded backward when exact) and one that cannot be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.bn_in = nn.BatchNorm2d(3)
        self.conv1 = nn.Conv2d(3, 8, 3)  # no padding: the input BN folds into it
        self.bn_mid = nn.BatchNorm2d(8)  # after a ReLU, before a padded conv: not foldable
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn_v = nn.BatchNorm1d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.conv1(self.bn_in(x)))
        x = self.conv2(self.bn_mid(x))
        return self.fc(self.bn_v(x.mean((2, 3))))


@dataclasses.dataclass
class Case:
    """A fixture model with its data: ``batches`` feed the model as ``model(x)`` or ``model(*x)``."""

    name: str
    model: nn.Module
    dummy_input: Any
    batches: list[Any]

    def run(self, model: nn.Module, batch: Any = None) -> Tensor:
        batch = self.batches[0] if batch is None else batch
        with torch.no_grad():
            return model(*batch) if isinstance(batch, tuple) else model(batch)


def _images(shape: tuple[int, ...], n: int, seed: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


def _build(name: str, seed: int = 0) -> Case:
    """The fixture model ``name``: weights, BatchNorm statistics and batches drawn from ``seed`` (AQ_TEST_SEED)."""
    torch.manual_seed(seed)
    if name == "multi_input":
        g = torch.Generator().manual_seed(seed + 1)
        batches: list[Any] = [(torch.randn(8, 3, 8, 8, generator=g), torch.randn(8, 5, generator=g)) for _ in range(3)]
        return Case(name, randomize_batchnorms(MultiInput(), seed), batches[0], batches)
    spec: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
        "conv_bn": (ConvBN, (8, 3, 10, 10)),
        "residual": (Residual, (8, 3, 8, 8)),
        "depthwise": (Depthwise, (8, 3, 10, 10)),
        "grouped": (Grouped, (8, 4, 9, 9)),
        "linear_bn": (LinearBN, (16, 10)),
        "conv_transpose_bn": (ConvTransposeBN, (8, 4, 5, 5)),
        "bn_first": (BNFirst, (8, 3, 10, 10)),
    }
    factory, shape = spec[name]
    images = _images(shape, 3, seed=seed + 1)
    return Case(name, randomize_batchnorms(factory(), seed), images[0], images)


CASES = ("conv_bn", "residual", "depthwise", "grouped", "linear_bn", "multi_input", "conv_transpose_bn", "bn_first")


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest, aq_seed: int) -> Case:
    return _build(str(request.param), aq_seed)


@pytest.fixture
def make_case(aq_seed: int) -> Callable[[str], Case]:
    return lambda name: _build(name, aq_seed)


@pytest.fixture(scope="session")
def digits() -> Any:
    """The digits case with the shipped weights: the same model on every machine."""
    from aq_search.examples.digits import digits_case

    return digits_case()


def relative_error(reference: Tensor, value: Tensor) -> float:
    """max |reference - value| / max |reference|."""
    reference, value = reference.detach(), value.detach()
    return float((reference - value).abs().max() / reference.abs().max().clamp_min(1e-12))
