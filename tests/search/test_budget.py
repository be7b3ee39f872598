"""The requested precision is a cost budget: a model over it never meets the target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from torch import nn

from aq_search import AutoQuant, InvalidInputError
from aq_search.search import load_search_space
from aq_search.search._budget import Budget

from ._scripted import batches, tiny_model

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space(**overrides: Any) -> dict[str, Any]:
    space: dict[str, Any] = {
        "orderings": ["bnf>scheme>amp"],
        "scheme": {"candidates": ["tf_enhanced/tf_enhanced"]},
        "amp": {"candidate_sets": [["w{param_bw}a{output_bw}", "w16a16"]], "num_samples_for_phase_1": 8},
        "sampler": "random",
        "max_trials": 1,
        "replay_reference": False,
        "pruner": {"type": "none"},
    }
    space.update(overrides)
    return space


def _sixteen_bit_only(model: nn.Module, num_samples: int | None = None) -> float:
    """1.0 for the FP32 model or when every weight quantizer is at 16 bits; else 0.5."""
    bits = [m.bitwidth for n, m in model.named_modules() if "weight" in n and hasattr(m, "bitwidth") and m.enabled]
    return 1.0 if not bits or min(bits) >= 16 else 0.5


def _run(tmp_path: Path, evaluate: Any = _sixteen_bit_only, **kwargs: Any) -> Any:
    model, data = tiny_model(), batches()
    aq = AutoQuant(
        model, data[0], data, evaluate, param_bw=4, output_bw=8, results_dir=tmp_path / "aq", seed=0, **kwargs
    )
    return aq.optimize(allowed_accuracy_drop=0.01)


def test_amp_result_over_the_budget_is_never_chosen(tmp_path: Path) -> None:
    result = _run(tmp_path / "a", search_space=_space())
    assert not result.target_met and result.within_budget
    assert result.relative_bops is not None and result.relative_bops <= 1.5 + 1e-9
    report = (Path(result.results_dir) / "report.html").read_text()
    assert "BOPs vs requested" in report and "Best stage" in report
    # with a budget that allows all-W16A16 (8x the BOPs of all-W4A8) the same search meets the target
    free = _run(tmp_path / "b", search_space=_space(), max_relative_bops=8.0)
    assert free.target_met and free.relative_bops == pytest.approx(8.0)


def test_a_model_over_budget_is_never_reported_as_meeting_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Budget, "allows", lambda self, relative: False)  # every model is over budget
    # every model scores 1.0 (FP32 included): accurate enough, but over budget
    result = _run(tmp_path, lambda m, n=None: 1.0, search_space=_space(orderings=["bnf>scheme"]), max_relative_bops=100.0)
    assert result.accuracy == 1.0
    trial = result.study.trials[0]
    assert trial.user_attrs["within_budget"] is False
    assert not result.target_met and not result.within_budget
    assert "target_met_by" not in result.study.user_attrs
    assert "Target not met" in result.message


def test_budget_is_relative_to_the_requested_precision() -> None:
    from aq_search import QuantSim

    model, data = tiny_model(), batches(1)
    sim = QuantSim(model, data[0], default_param_bw=4, default_output_bw=8)
    assert Budget(4, 8).relative(sim) == pytest.approx(1.0)
    assert Budget(8, 8).relative(sim) == pytest.approx(0.5)
    assert Budget(2, 8).allows(Budget(2, 8).relative(sim)) is False
    space = load_search_space("default")
    assert space.max_relative_bops == 1.5
    with pytest.raises(InvalidInputError, match="max_relative_bops"):
        AutoQuant(model, data[0], data, _sixteen_bit_only, max_relative_bops=0.5)
