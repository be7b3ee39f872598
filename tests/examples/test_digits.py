"""The embedded digits case: the shipped weights are the model everywhere; retraining stays available."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aq_search._cli import _build_parser
from aq_search.examples import digits as ex


def test_shipped_weights_load_safely_and_score_as_recorded() -> None:
    state = torch.load(ex.SHIPPED_WEIGHTS, weights_only=True)  # a plain state dict: no pickled code
    assert set(state) == set(ex.DigitsCNN().state_dict())
    assert Path(ex.SHIPPED_WEIGHTS).stat().st_size < 64_000
    case = ex.digits_case()
    assert not case.model.training
    # the docstring of SHIPPED_WEIGHTS records 0.9862 (786 of 797): inference only, so any CPU agrees to a digit or two
    assert case.eval_callback(case.model) == pytest.approx(0.9862, abs=0.004)
    assert len(case.split.test_x) == 797 and len(case.calibration_batches) == 8


def test_every_entry_point_gets_the_shipped_model(tmp_path: Path) -> None:
    shipped = ex.load_digits_cnn().state_dict()

    def same(model: torch.nn.Module) -> bool:
        return all(torch.equal(v, shipped[k]) for k, v in model.state_dict().items())

    assert same(ex.digits_case(tmp_path).model)  # a cache folder no longer means training
    assert same(ex.build_task()["model"])
    assert not list(tmp_path.iterdir())


def test_retrain_trains_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = ex.train_digits_cnn

    def short(cache_dir: object = None, seed: int = 0, epochs: int = 40) -> ex.DigitsCNN:
        calls.append(seed)
        return real(cache_dir, seed, epochs=1)  # type: ignore[arg-type]

    monkeypatch.setattr(ex, "train_digits_cnn", short)
    first = ex.digits_case(tmp_path, retrain=True).model
    assert calls == [0] and len(list(tmp_path.glob("digits_cnn_*.pt"))) == 1
    again = ex.digits_case(tmp_path, retrain=True).model  # loaded from the cache, same weights
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in first.state_dict().items())
    ex.digits_case(tmp_path, seed=3)  # another split: the shipped weights have seen its test digits
    assert calls == [0, 0, 3]


def test_demo_has_retrain_flag() -> None:
    args = _build_parser().parse_args(["demo", "--retrain", "--results-dir", "x"])
    assert args.retrain is True
    assert _build_parser().parse_args(["demo"]).retrain is False
