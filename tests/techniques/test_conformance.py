"""Every registered technique, on every fixture model: the contract they all share."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from aq_search import QuantSim
from aq_search.quantsim import is_prepared
from aq_search.techniques import (
    AdaRoundParams,
    BatchNormFoldConfig,
    BiasCorrectionConfig,
    CLEConfig,
    TechniqueConfig,
    fold_all_batch_norms,
    registered_techniques,
)
from aq_search.techniques._act_range import ActivationRangeSearchConfig

from .conftest import Case, relative_error

#: Every registered technique with an apply function (the search runs ``scheme`` and ``amp`` itself).
TECHNIQUES = {key: spec for key, spec in registered_techniques().items() if spec.apply is not None}

#: A small, valid config per technique (AdaRound with few iterations to stay fast).
CONFIGS: dict[str, TechniqueConfig] = {
    "bnf": BatchNormFoldConfig(),
    "cle": CLEConfig(high_bias_absorption=False),
    "adaround": AdaRoundParams(num_batches=2, num_iterations=30, batch_size=64),
    "bc": BiasCorrectionConfig(num_batches=2),
    "ars": ActivationRangeSearchConfig(num_batches=2),
}


def test_every_technique_has_a_config() -> None:
    assert set(CONFIGS) == set(TECHNIQUES)  # a newly registered technique adds its config here
    for tid, t in TECHNIQUES.items():
        assert t.config_class.technique == tid
        assert isinstance(CONFIGS[tid], t.config_class)


def _apply(tid: str, case: Case, seed: int = 0) -> tuple[nn.Module, Any]:
    """Apply technique ``tid`` the way a pipeline would; returns (resulting model, what apply returned)."""
    technique, config = TECHNIQUES[tid], CONFIGS[tid]
    assert technique.apply is not None
    if tid == "bnf":
        out = technique.apply(case.model, case.dummy_input, config)
        return out, out
    folded = fold_all_batch_norms(case.model, case.dummy_input)
    if technique.acts_on == "model":
        out = technique.apply(folded, case.dummy_input, config)
        return out, out
    sim = QuantSim(folded, case.dummy_input, quant_scheme="tf", default_param_bw=4, default_output_bw=8, per_channel=False)
    sim.compute_encodings(case.batches)
    kwargs: dict[str, Any] = {"seed": seed} if "seed" in technique.run_kwargs else {}
    assert technique.apply is not None
    out = technique.apply(sim, case.batches, config, **kwargs)
    assert out is sim
    return sim.model, out


@pytest.mark.parametrize("tid", list(TECHNIQUES))
def test_returns_a_prepared_module_and_leaves_the_input_alone(tid: str, case: Case) -> None:
    before = copy.deepcopy(case.model.state_dict())
    model, _ = _apply(tid, case)
    assert isinstance(model, nn.Module)
    assert is_prepared(model)
    assert TECHNIQUES[tid].meta_key in model.meta["aq_search"]
    after = case.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert case.run(model).shape == case.run(case.model).shape


@pytest.mark.parametrize("tid", list(TECHNIQUES))
def test_deterministic_under_a_fixed_seed(tid: str, case: Case) -> None:
    torch.manual_seed(123)
    first, _ = _apply(tid, case, seed=7)
    torch.manual_seed(456)  # the global RNG must not matter
    second, _ = _apply(tid, case, seed=7)
    for batch in case.batches:
        assert torch.equal(case.run(first, batch), case.run(second, batch))


@pytest.mark.parametrize("tid", list(TECHNIQUES))
def test_config_round_trips_through_dict_and_yaml(tid: str) -> None:
    config = CONFIGS[tid]
    cls = TECHNIQUES[tid].config_class
    assert cls.from_dict(config.to_dict()) == config
    text = yaml.safe_dump(config.to_dict())
    assert cls.from_dict(yaml.safe_load(text)) == config
    with pytest.raises(ValueError, match="Unknown key"):
        cls.from_dict({**config.to_dict(), "not_a_field": 1})
    with pytest.raises(Exception):  # noqa: B017 - frozen dataclass
        config.__setattr__(next(iter(config.to_dict())), None)


@pytest.mark.parametrize("tid", ["bnf", "cle"])
def test_fp32_function_preserved(tid: str, case: Case) -> None:
    model, _ = _apply(tid, case)
    for batch in case.batches:
        ref = case.run(case.model, batch)
        got = case.run(model, batch)
        if tid == "cle" and model.meta["aq_search"]["cle"].relu6_replaced:
            # the only allowed change: ReLU6 -> ReLU, compared against the same change made by hand
            reference = fold_all_batch_norms(case.model, case.dummy_input)
            for name in model.meta["aq_search"]["cle"].relu6_replaced:
                reference.get_submodule(name.rpartition(".")[0] or "").__setattr__(name.rpartition(".")[2], nn.ReLU())
            ref = case.run(reference, batch)
        assert relative_error(ref, got) < 1e-5, (case.name, relative_error(ref, got))
