from __future__ import annotations

import pytest
import torch
from torch import nn

from aq_search import InvalidInputError, ModelPreparationError, prepare_model, validate_model
from aq_search.quantsim import Add, Concat, Mean

from .conftest import ControlFlowNet, FunctionalNet, SharedReLUNet, TinyEncoder, TwoInputTupleOut, encoder_inputs


def test_functional_ops_become_modules_and_function_is_kept(seeded: None) -> None:
    model = FunctionalNet().eval()
    x = torch.randn(2, 3, 8, 8)
    gm = prepare_model(model, x)
    kinds = {type(m) for _, m in gm.named_modules()}
    assert {nn.ReLU, Add, Concat, Mean, nn.Linear} <= kinds
    # the raw parameter used in F.linear became an nn.Linear sharing the same values
    linear = next(m for _, m in gm.named_modules() if isinstance(m, nn.Linear))
    assert torch.equal(linear.weight, model.w)
    assert torch.allclose(gm(x), model(x), atol=1e-6)
    # the original model is untouched (prepare works on a copy)
    assert not any(isinstance(m, Add) for m in model.modules())
    report = gm.meta["aq_search"]["report"]
    assert any("Add module" in c for c in report.changes)


def test_multiple_inputs_and_nested_outputs(seeded: None) -> None:
    model = TwoInputTupleOut().eval()
    a, b = torch.randn(4, 6), torch.randn(4, 3)
    gm = prepare_model(model, (a, b))
    out, extra = gm(a, b)
    ref_out, ref_extra = model(a, b)
    assert torch.allclose(out, ref_out) and set(extra) == {"sum", "a"}
    assert torch.allclose(extra["a"], ref_extra["a"])
    assert gm.meta["aq_search"]["report"].input_names == ("a", "b")


def test_transformer_encoder_is_prepared(seeded: None) -> None:
    model = TinyEncoder().eval()
    ids, mask = encoder_inputs()
    gm = prepare_model(model, (ids, mask))
    names = {type(m).__name__ for _, m in gm.named_modules()}
    assert {"Embedding", "Linear", "LayerNorm", "GELU", "Softmax", "MatMul", "Add", "Mul"} <= names
    ref = model(ids, mask)
    got = gm(ids, mask)
    assert torch.allclose(got["logits"], ref["logits"], atol=1e-5)


def test_stateless_module_called_twice_is_duplicated() -> None:
    gm = prepare_model(SharedReLUNet().eval(), torch.randn(1, 3, 4, 4))
    targets = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert "relu" in targets and "relu_1" in targets


def test_validate_names_untraceable_module_and_fix() -> None:
    report = validate_model(ControlFlowNet(), torch.randn(2, 4))
    assert not report.ok
    text = str(report.errors[0])
    assert "'inner'" in text and "leaf_modules" in text
    with pytest.raises(ModelPreparationError, match="inner"):
        prepare_model(ControlFlowNet(), torch.randn(2, 4))
    # keeping the module whole makes it preparable
    gm = prepare_model(ControlFlowNet(), torch.randn(2, 4), leaf_modules=["inner"])
    assert any(n.target == "inner" for n in gm.graph.nodes if n.op == "call_module")


def test_validate_reports_unsupported_layer() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.RNNCell(8, 8))
    report = validate_model(model, torch.randn(2, 4))
    assert report.ok
    assert any("RNNCell" in p.message for p in report.warnings)


def test_bad_inputs_have_clear_errors() -> None:
    with pytest.raises(InvalidInputError, match=r"must be a torch\.nn\.Module"):
        prepare_model("resnet18", torch.randn(1))  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="rejected dummy_input"):
        prepare_model(nn.Linear(4, 2), torch.randn(2, 5))
    report = validate_model(nn.Sequential(nn.Flatten(), nn.Identity()), torch.randn(2, 3))
    assert not report.ok and "nothing to quantize" in str(report.errors[0])


def test_capture_check_tolerates_float_reordering_at_scale_but_not_another_function() -> None:
    """The check that the captured graph computes the model's function: float32 summation-order error grows with the
    output's magnitude (a BERT's hidden states differ by ~1e-4 between CPUs), a wrong function does not look like that."""
    from aq_search.quantsim._prepare import _outputs_close

    g = torch.Generator().manual_seed(0)
    reference = torch.randn(4, 16, 384, generator=g) * 5.0
    reference[0, 0, :4] = torch.tensor([1e-3, -1e-3, 0.0, 2e-6])  # values near zero: relative tolerance alone fails
    reordered = reference + 2e-4 * torch.sign(torch.randn(reference.shape, generator=g))
    assert _outputs_close(reference, reordered)[0]
    assert _outputs_close({"last": reference, "ids": torch.arange(3)}, {"last": reordered, "ids": torch.arange(3)})[0]
    for wrong in (reference + 0.05, reference * 1.01, reference.flip(-1)):
        same, diff = _outputs_close(reference, wrong)
        assert not same and diff > 0.01
    assert not _outputs_close(reference, reference[:, :8])[0]  # another shape
