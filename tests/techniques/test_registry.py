"""The technique registry: every technique declares itself once, and the rest of the code reads it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import optuna
import pytest
import torch.fx as fx

from aq_search._errors import InvalidInputError, SearchSpaceError
from aq_search.search import STAGES, load_search_space, validate_ordering
from aq_search.search._pipeline import Stage, _config_types, suggest_pipeline
from aq_search.techniques import TechniqueConfig
from aq_search.techniques._registry import (
    _REGISTRY,
    COST_CLASSES,
    Dimension,
    TechniqueSpec,
    register_technique,
    registered_techniques,
)

SPECS = registered_techniques()


def test_the_builtin_techniques_are_registered() -> None:
    assert {"scheme", "bnf", "cle", "bc", "adaround", "amp"} <= set(SPECS)
    assert set(STAGES) == set(SPECS)
    assert {k for k, s in SPECS.items() if s.reapply_on_load} >= {"bnf", "cle"}
    assert {k for k, s in SPECS.items() if s.acts_on == "model"} == {"bnf", "cle"}


@pytest.mark.parametrize("key", sorted(SPECS))
def test_every_registered_technique_is_complete(key: str) -> None:
    spec = SPECS[key]
    assert spec.key == key
    assert spec.cost in COST_CLASSES
    assert spec.description
    assert issubclass(spec.config_class, TechniqueConfig)
    assert spec.config_class.__name__ in _config_types()  # results with it can be reloaded
    assert all(r in SPECS for r in spec.requires + spec.after)
    fields = {f.name for f in dataclasses.fields(spec.config_class)}
    for dim in spec.dimensions:
        assert isinstance(dim, Dimension)
        if spec.generic:
            assert dim.name in fields
        if dim.low is not None and dim.high is not None:
            assert dim.low <= dim.default <= dim.high
    if spec.generic:  # everything the search needs comes from the spec: defaults build a valid config
        assert spec.apply is not None
        config = spec.build({d.name: d.default for d in spec.dimensions})
        assert type(config).from_dict(config.to_dict()) == config
        assert Stage(key, config).describe() == key


@pytest.fixture
def toy_technique() -> Iterator[TechniqueSpec]:
    """A model technique registered for one test (identity apply), then removed."""

    @dataclasses.dataclass(frozen=True)
    class ToyConfig(TechniqueConfig):
        strength: float = 1.0

    def apply(model: fx.GraphModule, dummy_input: object, config: ToyConfig) -> fx.GraphModule:
        return model

    spec = register_technique(
        TechniqueSpec(
            key="toy",
            config_class=ToyConfig,
            apply=apply,
            acts_on="model",
            description="a toy",
            requires=("bnf",),
            dimensions=(Dimension("strength", float, 1.0, 0.0, 2.0),),
            cost="free",
            generic=True,
        )
    )
    yield spec
    del _REGISTRY["toy"]


def test_ordering_rules_and_space_sections_read_the_registry(toy_technique: TechniqueSpec) -> None:
    assert validate_ordering("bnf>toy>scheme>adaround") == ("bnf", "toy", "scheme", "adaround")
    with pytest.raises(SearchSpaceError, match="toy needs bnf first"):
        validate_ordering("toy>bnf")
    with pytest.raises(SearchSpaceError, match="toy changes the float model"):
        validate_ordering("bnf>scheme>adaround>toy")
    data = load_search_space("fast").to_dict()
    data["orderings"] = ["bnf>toy>scheme"]
    data["toy"] = {"strength": {"low": 0.5, "high": 1.5}}
    space = load_search_space(data)
    trial = optuna.trial.FixedTrial({"toy__strength": 0.75, "scheme__candidate": "tf_enhanced/tf", "scheme__per_channel": True})
    pipeline = suggest_pipeline(trial, space, param_bw=8, output_bw=8, num_batches_available=4)
    assert pipeline.stages[1].config == toy_technique.build({"strength": 0.75})
    assert str(pipeline).startswith("bnf > toy(strength=0.75)")
    assert load_search_space(space.to_dict()).techniques == space.techniques  # round-trips


def test_a_bad_spec_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="The 'acts_on' parameter of TechniqueSpec must be"):
        TechniqueSpec(key="x", config_class=TechniqueConfig, apply=None, acts_on="graph", description="x")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="The 'cost' parameter of TechniqueSpec must be"):
        TechniqueSpec(key="x", config_class=TechniqueConfig, apply=None, acts_on="sim", description="x", cost="huge")
