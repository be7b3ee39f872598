"""Capture front ends, bad input, and transformer-aware quantizer placement on small plain-torch models."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aq_search import InvalidInputError, ModelPreparationError, QuantSim, prepare_model, validate_model
from aq_search.quantsim import _placement


class KeywordAttention(nn.Module):
    """Keyword inputs, in-place item assignment (fx cannot trace it), a dict output, an integer mask input."""

    def __init__(self, dim: int = 16, mask_value: float = -1e4) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.mask_value = mask_value

    def forward(self, input_ids: Tensor, attention_mask: Tensor, use_cache: bool = False) -> dict[str, Tensor]:
        x = self.emb(input_ids)
        bias = torch.zeros(attention_mask.shape, dtype=x.dtype)
        bias[attention_mask == 0] = self.mask_value  # item assignment: 'Proxy' object does not support it
        scores = self.q(x) @ self.k(x).transpose(-1, -2) / math.sqrt(x.shape[-1])
        scores = scores + bias[:, None, :]
        out = self.out(torch.softmax(scores, dim=-1) @ self.v(x))
        return {"hidden": out, "pooled": out.mean(1)}


def _inputs(batch: int = 4, length: int = 10) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1:, length // 2 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _cos(a: Tensor, b: Tensor) -> float:
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def test_export_front_end_keyword_inputs_and_dict_output() -> None:
    torch.manual_seed(0)
    model, inputs = KeywordAttention().eval(), _inputs()
    report = validate_model(model, inputs)
    assert report.ok and report.front_end == "torch.export"
    assert any("torch.export" in p.message for p in report.problems if p.severity == "info")
    prepared = prepare_model(model, inputs)
    names = {n for n, _ in prepared.named_modules()}
    assert {"emb", "q", "k", "v", "out"} <= names  # quantizable modules keep their names
    other = _inputs(batch=3, length=7)  # batches may differ in size from the dummy input
    out = prepared(**other)
    assert set(out) == {"hidden", "pooled"}
    torch.testing.assert_close(out["hidden"], model(**other)["hidden"])


def test_eval_callback_reads_outputs_by_name() -> None:
    torch.manual_seed(0)
    model, inputs = KeywordAttention().eval(), _inputs()
    sim = QuantSim(model, inputs)
    sim.compute_encodings([inputs])

    def eval_callback(m: nn.Module) -> float:
        with torch.no_grad():
            return float(m(**inputs)["pooled"].norm())  # unchanged user code, reading the output by name

    assert math.isfinite(eval_callback(sim.model))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        y = self.a(x)
        if float(y.sum()) > 0:  # data-dependent Python control flow
            return self.b(y)
        return y


class Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = DataDependent()
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block(x))


def test_neither_front_end_names_both_errors_and_leaf_modules() -> None:
    with pytest.raises(ModelPreparationError) as info:
        prepare_model(Wrapper().eval(), torch.randn(2, 4))
    text = str(info.value)
    assert "torch.export failed" in text and "torch.fx failed" in text
    assert "leaf_modules" in text
    report = validate_model(Wrapper().eval(), torch.randn(2, 4))
    assert not report.ok and "torch.export" in str(report)


def test_fx_fallback_is_reported_with_the_export_error() -> None:
    report = validate_model(Wrapper().eval(), torch.randn(2, 4), leaf_modules=["block"])
    assert report.ok and report.front_end == "torch.fx"
    assert any("torch.export failed" in p.message for p in report.problems)


def test_missing_forward_argument_is_named() -> None:
    model = KeywordAttention().eval()
    with pytest.raises(InvalidInputError, match="attention_mask"):
        prepare_model(model, {"input_ids": _inputs()["input_ids"]})


def test_model_and_batch_on_different_devices_names_both() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(InvalidInputError, match=r"cpu.*meta|meta.*cpu"):
        prepare_model(model, torch.randn(2, 4, device="meta"))


# -- placement -------------------------------------------------------------------------------------------
class FloatMaskAttention(nn.Module):
    """The additive mask arrives as a float model input (-1e4 where masked)."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        scores = torch.matmul(self.q(x), self.k(x).transpose(-1, -2)) / 4.0
        return torch.matmul(torch.softmax(scores + mask, dim=-1), self.v(x))


def _float_mask_case() -> tuple[nn.Module, tuple[Tensor, Tensor]]:
    torch.manual_seed(0)
    x = torch.randn(8, 12, 16)
    mask = torch.zeros(8, 1, 12)
    mask[:, :, 6:] = -1e4
    model = FloatMaskAttention().eval()
    with torch.no_grad():
        model.q.weight.mul_(6.0)  # peaked attention: scores of +-10s, far below one 8-bit step of a range over -1e4
    return model, (x, mask)


def _w8a8_cos(model: nn.Module, inputs: Any) -> tuple[float, QuantSim]:
    sim = QuantSim(model, inputs, default_param_bw=8, default_output_bw=8, quant_scheme="tf")
    sim.compute_encodings([inputs])
    with torch.no_grad():
        return _cos(sim.model(*inputs), model(*inputs)), sim


def test_constant_mask_add_is_left_in_float() -> None:
    model, inputs = _float_mask_case()
    cos, sim = _w8a8_cos(model, inputs)
    assert cos >= 0.99, cos
    assert "mask" in sim.unquantized  # the mask input's own quantizer
    assert any(name.endswith("add") for name in sim.unquantized)


def test_mask_rule_is_what_saves_the_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    model, inputs = _float_mask_case()
    monkeypatch.setattr(_placement, "MASK_MAGNITUDE", math.inf)  # the rule off: an 8-bit range over -1e4
    cos, sim = _w8a8_cos(model, inputs)
    assert not sim.unquantized
    assert cos < 0.9, cos


def test_outlier_activations_are_not_taken_for_masks() -> None:
    """Large values that are not one constant (real outliers) keep their quantizer."""
    torch.manual_seed(0)
    model = FloatMaskAttention().eval()
    x = torch.randn(8, 12, 16)
    mask = torch.randn(8, 1, 12) * 3e3  # huge but varying: not a mask fill value
    _, sim = _w8a8_cos(model, (x, mask))
    assert "mask" not in sim.unquantized


class IntMaskModel(nn.Module):
    """Mask and positions computed from an integer input inside the model."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, dim)
        self.pos = nn.Embedding(32, dim)
        self.q, self.k = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        x = self.emb(input_ids) + self.pos(torch.arange(input_ids.shape[1]))
        ext = (1.0 - attention_mask[:, None, :].float()) * -10000.0
        scores = torch.matmul(self.q(x), self.k(x).transpose(-1, -2)) + ext
        return torch.softmax(scores, dim=-1)


def test_input_independent_mask_chain_is_unquantized() -> None:
    model, inputs = IntMaskModel().eval(), _inputs()
    sim = QuantSim(model, inputs)
    reasons = " ".join(sim.unquantized.values())
    assert "integer inputs and constants" in reasons
    assert "emb" not in sim.unquantized and "q" not in sim.unquantized


class SkipLn(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.a = nn.Linear(dim, dim)
        self.ff = nn.Linear(dim, 2 * dim)
        self.act = nn.GELU()
        self.ff2 = nn.Linear(2 * dim, dim)
        self.ln = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        return self.ln(h + self.ff2(self.act(self.ff(h))))


def test_residual_layer_norm_and_gelu_placement() -> None:
    sim = QuantSim(SkipLn().eval(), torch.randn(2, 5, 16))
    assert "ff" in sim.unquantized  # GEMM fused with GELU
    assert "ff2" in sim.unquantized  # GEMM output added into the residual
    assert "add" in sim.unquantized  # residual sum fused with the LayerNorm
    assert "a" not in sim.unquantized and "ln" not in sim.unquantized and "act" not in sim.unquantized
