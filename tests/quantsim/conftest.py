"""Small models that exercise model preparation and QuantSim."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn


class FunctionalNet(nn.Module):
    """Functional ops everywhere: F.relu, +, torch.cat, mean, F.linear with a raw parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.w = nn.Parameter(torch.randn(5, 16) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.conv1(x))
        b = self.conv2(a) + a
        c = torch.cat([a, b], dim=1)
        return F.linear(c.mean((2, 3)), self.w)


class TwoInputTupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fa = nn.Linear(6, 4)
        self.fb = nn.Linear(3, 4)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ya, yb = self.fa(a), self.fb(b)
        return ya * yb, {"sum": ya + yb, "a": torch.sigmoid(ya)}


class TinyEncoder(nn.Module):
    """A one-block transformer encoder: embeddings, attention with matmul/softmax and a mask, LayerNorm, GELU."""

    def __init__(self, vocab: int = 40, dim: int = 16, heads: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.heads = heads
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, 12, dim) * 0.02)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, 4 * dim)
        self.ff2 = nn.Linear(4 * dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.cls = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        b, t = ids.shape
        x = self.tok(ids) + self.pos[:, :t]
        d = x.shape[-1] // self.heads
        q = self.q(x).view(b, t, self.heads, d).transpose(1, 2)
        k = self.k(x).view(b, t, self.heads, d).transpose(1, 2)
        v = self.v(x).view(b, t, self.heads, d).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(d)
        scores = scores + (1.0 - mask[:, None, None, :]) * -1e4
        attn = F.softmax(scores, dim=-1)
        ctx = torch.matmul(attn, v).transpose(1, 2).reshape(b, t, -1)
        x = self.ln1(x + self.o(ctx))
        x = self.ln2(x + self.ff2(F.gelu(self.ff1(x))))
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return {"logits": self.cls(pooled), "hidden": x}


class ControlFlowNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Branchy()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.inner(x))


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent: torch.fx cannot trace this
            return self.lin(x)
        return -self.lin(x)


class SharedReLUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 1)
        self.c2 = nn.Conv2d(4, 4, 1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.c2(self.relu(self.c1(x))))


def encoder_inputs(batch: int = 4, t: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 40, (batch, t), generator=g)
    mask = torch.ones(batch, t)
    mask[:, t - 3 :] = 0.0
    return ids, mask


@pytest.fixture
def seeded() -> None:
    torch.manual_seed(0)
