"""BatchNorm folding: exactness per layer type, what is folded where, what is left and why."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import torch
from torch import nn

from aq_search import InvalidInputError, prepare_model
from aq_search.techniques import BatchNormFoldConfig, BatchNormFoldReport, FoldedBatchNorm, fold_all_batch_norms

from .conftest import Case, randomize_batchnorms, relative_error


def _bns(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_folds_every_foldable_batchnorm(case: Case) -> None:
    folded = fold_all_batch_norms(case.model, case.dummy_input)
    report: BatchNormFoldReport = folded.meta["aq_search"]["bn_fold"]
    left = set(_bns(folded))
    assert left == {bn for bn, _ in report.unfolded}
    assert {bn for bn, _, _ in report.folded} | left == set(_bns(case.model))
    expected_left = {"bn_first": {"bn_mid"}}.get(case.name, set())
    assert left == expected_left
    for batch in case.batches:
        assert relative_error(case.run(case.model, batch), case.run(folded, batch)) < 1e-5


def test_directions_and_statistics(make_case: Callable[[str], Case]) -> None:
    case = make_case("bn_first")
    folded = fold_all_batch_norms(case.model, case.dummy_input)
    report = folded.meta["aq_search"]["bn_fold"]
    assert ("bn_in", "conv1", "backward") in report.folded
    assert ("bn_v", "fc", "backward") in report.folded
    reason = dict(report.unfolded)["bn_mid"]
    assert "ReLU" in reason and "pads with zeros" in reason
    assert folded.meta["aq_search"]["unfolded_bn"] == {"bn_mid": reason}
    # statistics are recorded for forward folds only (they describe the layer's output)
    case = make_case("conv_bn")
    folded = fold_all_batch_norms(case.model, case.dummy_input)
    stats = folded.meta["aq_search"]["folded_bn"]
    assert set(stats) == {"conv1", "conv2"}
    bn = case.model.bn2
    assert isinstance(stats["conv2"], FoldedBatchNorm)
    assert torch.equal(stats["conv2"].gamma, bn.weight.detach().float())
    assert torch.equal(stats["conv2"].beta, bn.bias.detach().float())
    assert stats["conv2"].eps == bn.eps
    assert folded.conv2.bias is not None  # created: conv2 had none


def test_unfoldable_batchnorms_are_logged(make_case: Callable[[str], Case], caplog: pytest.LogCaptureFixture) -> None:
    case = make_case("bn_first")
    with caplog.at_level(logging.WARNING, logger="aq_search.techniques._bn_fold"):
        fold_all_batch_norms(case.model, case.dummy_input)
    assert any("bn_mid" in r.getMessage() for r in caplog.records)


def test_fold_into_following_can_be_turned_off(make_case: Callable[[str], Case]) -> None:
    case = make_case("bn_first")
    folded = fold_all_batch_norms(case.model, case.dummy_input, BatchNormFoldConfig(fold_into_following=False))
    assert set(_bns(folded)) == {"bn_in", "bn_mid", "bn_v"}


def test_residual_output_is_not_folded_into() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.bn_shared = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y + self.bn_shared(self.bn_shared(y))

    model = randomize_batchnorms(Net())
    x = torch.randn(2, 3, 6, 6)
    folded = fold_all_batch_norms(model, x)
    unfolded = dict(folded.meta["aq_search"]["bn_fold"].unfolded)
    assert "also feeds" in unfolded["bn"]
    assert "called 2 times" in unfolded["bn_shared"]
    assert relative_error(model(x), folded(x)) < 1e-6


def test_batch_statistics_batchnorm_is_left() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)).eval()
    folded = fold_all_batch_norms(model, torch.randn(2, 3, 6, 6))
    assert "running statistics" in dict(folded.meta["aq_search"]["bn_fold"].unfolded)["1"]


def test_works_on_a_prepared_model_and_twice() -> None:
    model = randomize_batchnorms(nn.Sequential(nn.Conv2d(3, 4, 3, groups=1), nn.BatchNorm2d(4), nn.ReLU()))
    x = torch.randn(2, 3, 6, 6)
    prepared = prepare_model(model, x)
    once = fold_all_batch_norms(prepared, x)
    twice = fold_all_batch_norms(once, x)
    assert "1" in prepared._modules  # the input is not modified
    assert set(twice.meta["aq_search"]["folded_bn"]) == {"0"}
    assert relative_error(model(x), twice(x)) < 1e-6


def test_conv1d_conv3d_and_transposed_depthwise() -> None:
    for model, x in [
        (nn.Sequential(nn.Conv1d(4, 6, 3, groups=2), nn.BatchNorm1d(6)), torch.randn(3, 4, 9)),
        (nn.Sequential(nn.Conv3d(2, 4, 3), nn.BatchNorm3d(4)), torch.randn(2, 2, 5, 5, 5)),
        (nn.Sequential(nn.ConvTranspose2d(4, 4, 3, groups=4), nn.BatchNorm2d(4)), torch.randn(2, 4, 5, 5)),
    ]:
        model = randomize_batchnorms(model)
        folded = fold_all_batch_norms(model, x)
        assert not _bns(folded)
        assert relative_error(model(x), folded(x)) < 1e-5


def test_bad_arguments() -> None:
    with pytest.raises(InvalidInputError, match="'model' parameter of fold_all_batch_norms"):
        fold_all_batch_norms("not a model", torch.randn(1))  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="'config' parameter of fold_all_batch_norms"):
        fold_all_batch_norms(nn.Conv2d(1, 1, 1), torch.randn(1, 1, 2, 2), {"fold_into_following": True})  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="'fold_into_following' parameter of BatchNormFoldConfig must be a bool"):
        BatchNormFoldConfig(fold_into_following=1)  # type: ignore[arg-type]
