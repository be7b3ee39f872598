"""The search reads everything about a technique from its registered spec, hooks included.

A toy technique registered for one test shows that its YAML section, its trial parameters (through
its ``suggest`` hook), its ordering rules, its label, whether it can run, whether trials may be pruned
before it, and how it runs (``apply`` with ``run_kwargs``, or a ``run`` hook) need no code elsewhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, ClassVar

import optuna
import pytest
import torch
from torch import nn

from aq_search._errors import InvalidInputError, SearchSpaceError
from aq_search.quantsim import QuantSim, prepare_model
from aq_search.search import CountingEval, Pipeline, RunContext, Stage, load_search_space, run_pipeline, suggest_pipeline
from aq_search.search._objective import may_prune_after
from aq_search.search._pipeline import Fixed, usable_orderings
from aq_search.techniques import BatchNormFoldConfig, TechniqueConfig
from aq_search.techniques._registry import _REGISTRY, Dimension, SuggestContext, TechniqueSpec, register_technique


@dataclasses.dataclass(frozen=True)
class ToySimConfig(TechniqueConfig):
    technique: ClassVar[str] = "toysim"
    level: int = 2
    num_batches: int = 1


CALLS: list[dict[str, Any]] = []


def toy_apply(sim: QuantSim, batches: Any, config: ToySimConfig, *, forward_fn: Any = None, seed: int = -1) -> QuantSim:
    CALLS.append({"level": config.level, "seed": seed, "batches": len(batches)})
    return sim


def toy_suggest(ctx: SuggestContext) -> ToySimConfig:
    # a custom hook: the level is drawn, the batches follow the search's data
    return ToySimConfig(level=int(ctx.draw("level")) * 10, num_batches=ctx.clamp_batches(99))


@pytest.fixture
def toysim() -> Iterator[TechniqueSpec]:
    spec = register_technique(
        TechniqueSpec(
            key="toysim",
            config_class=ToySimConfig,
            apply=toy_apply,
            acts_on="sim",
            description="a toy sim technique",
            after=("scheme",),
            dimensions=(Dimension("level", int, 2, 1, 5),),
            cost="data",
            space_key="toy_section",
            suggest=toy_suggest,
            run_kwargs={"seed": "seed"},
            describe_config=lambda c: f"toysim(L{c.level})",
            usable=lambda space, param_bw, output_bw, fixed: param_bw <= 8,
            prune_before=False,
        )
    )
    CALLS.clear()
    yield spec
    del _REGISTRY["toysim"]


def _space(**section: Any) -> Any:
    data = load_search_space("fast").to_dict()
    data["orderings"] = ["bnf>scheme>toysim", "bnf>scheme"]
    data["toy_section"] = section or {"level": {"low": 1, "high": 3}}
    return load_search_space(data)


def test_section_parameters_label_and_ordering_come_from_the_spec(toysim: TechniqueSpec) -> None:
    space = _space()
    assert space.toy_section.level.low == 1
    assert space.to_dict()["toy_section"] == {"level": {"low": 1, "high": 3, "log": False, "step": 1}}
    assert load_search_space(space.to_dict()).techniques == space.techniques
    params = {"pipeline__ordering": "bnf>scheme>toysim", "toysim__level": 3, "scheme__candidate": "tf_enhanced/tf"}
    trial = optuna.trial.FixedTrial({**params, "scheme__per_channel": True})
    pipeline = suggest_pipeline(trial, space, param_bw=8, output_bw=8, num_batches_available=4)
    assert pipeline.stages[-1].config == ToySimConfig(level=30, num_batches=4)  # the hook's config
    assert str(pipeline) == "bnf > scheme(tf_enhanced/tf) > toysim(L30)"
    with pytest.raises(SearchSpaceError, match="scheme must come before toysim"):
        load_search_space({**load_search_space("fast").to_dict(), "orderings": ["toysim>scheme"]})
    with pytest.raises(SearchSpaceError, match=r"key 'toy_section.level': must be in \[1, 5\]"):
        _space(level=9)
    with pytest.raises(SearchSpaceError, match=r"key .toy_section\.depth.: unknown key"):
        _space(depth=1)


def test_usable_and_prune_before_hooks(toysim: TechniqueSpec) -> None:
    space = _space()
    assert usable_orderings(space, 8, 8, Fixed()) == ["bnf>scheme>toysim", "bnf>scheme"]
    assert usable_orderings(space, 16, 8, Fixed()) == ["bnf>scheme"]  # the hook says it cannot run at W16
    pipeline = Pipeline(tuple(Stage(k, None) for k in ("bnf", "scheme", "toysim")))
    assert [may_prune_after(pipeline, i) for i in range(3)] == [False, False, False]


def test_a_stage_runs_as_its_spec_says(toysim: TechniqueSpec) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    batches = [torch.randn(8, 4) for _ in range(3)]
    model = prepare_model(net, batches[0])
    ctx = RunContext(model, batches[0], batches, CountingEval(lambda m, n=None: 1.0), 1.0, 0.5, 8, 8, seed=7)
    run = run_pipeline(ctx, Pipeline((Stage("bnf", BatchNormFoldConfig()), Stage("toysim", ToySimConfig(level=4)))))
    assert CALLS == [{"level": 4, "seed": 7, "batches": 3}]  # apply(sim, calibration, config, forward_fn, seed=ctx.seed)
    assert [s.stage for s in run.stages] == ["bnf", "toysim"]


def test_a_spec_the_search_cannot_run_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="needs an 'apply' function or a 'run' hook"):
        TechniqueSpec(key="x", config_class=TechniqueConfig, apply=None, acts_on="sim", description="x")
