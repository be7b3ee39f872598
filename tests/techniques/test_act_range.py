"""Per-layer activation range search (``ars``): a registered technique, from its config to a search stage."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from aq_search import QuantSim
from aq_search._errors import InvalidInputError, SearchSpaceError
from aq_search.search import load_search_space, validate_ordering
from aq_search.techniques._act_range import ActivationRangeSearchConfig, search_activation_ranges

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _outlier_case() -> tuple[nn.Module, list[torch.Tensor]]:
    """Inputs with one huge value per batch: a min-max (``tf``) range wastes a 4-bit grid on it."""
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    batches = []
    for _ in range(2):
        x = torch.randn(1024, 32, generator=g)
        x[0, 0] = 100.0
        batches.append(x)
    return net, batches


def test_the_outlier_range_is_clipped_and_no_quantizer_gets_worse() -> None:
    net, batches = _outlier_case()
    sim = QuantSim(net, batches[0], default_output_bw=4, default_param_bw=8, quant_scheme="tf")
    sim.compute_encodings(batches)
    sim = search_activation_ranges(sim, batches, ActivationRangeSearchConfig(min_ratio=0.05, num_candidates=20))
    report = sim.model.meta["aq_search"]["ars"]
    assert report.ratios  # the quantizers were searched
    for name in report.ratios:
        assert report.mse_after[name] <= report.mse_before[name]  # ratio 1 is a candidate: never worse
    # the model input's quantizer (the only one that sees the outlier raw): clipped hard, error cut by > 2x
    first = min(report.mse_before, key=lambda n: list(sim.activation_quantizers).index(n))
    assert report.ratios[first] < 0.5
    assert report.mse_after[first] < 0.5 * report.mse_before[first]


def test_the_encodings_it_keeps_are_the_ones_the_sim_uses() -> None:
    net, batches = _outlier_case()
    sim = QuantSim(net, batches[0], default_output_bw=4, quant_scheme="tf")
    sim.compute_encodings(batches)
    before = {n: q.scale.clone() for n, q in sim.activation_quantizers.items() if q.scale is not None}
    search_activation_ranges(sim, batches, ActivationRangeSearchConfig(min_ratio=0.05, num_candidates=20))
    report = sim.model.meta["aq_search"]["ars"]
    for name, ratio in report.ratios.items():
        scale = sim.activation_quantizers[name].scale
        assert scale is not None
        if ratio == 1.0:
            assert torch.equal(scale, before[name])
        else:
            assert float(scale) < float(before[name])


def test_config_is_validated_with_the_project_wording() -> None:
    with pytest.raises(InvalidInputError, match=r"The 'min_ratio' parameter of ActivationRangeSearchConfig must be"):
        ActivationRangeSearchConfig(min_ratio=0.0)
    with pytest.raises(InvalidInputError, match=r"The 'num_candidates' parameter of ActivationRangeSearchConfig must be"):
        ActivationRangeSearchConfig(num_candidates=1)
    c = ActivationRangeSearchConfig(num_batches=3, min_ratio=0.3, num_candidates=5)
    assert ActivationRangeSearchConfig.from_dict(c.to_dict()) == c


def test_an_uncalibrated_sim_is_refused() -> None:
    net, batches = _outlier_case()
    sim = QuantSim(net, batches[0])
    with pytest.raises(Exception, match="compute_encodings"):
        search_activation_ranges(sim, batches)


def test_orderings_and_yaml_section_come_from_the_registry(tmp_path: Path) -> None:
    assert validate_ordering("bnf>scheme>ars>adaround") == ("bnf", "scheme", "ars", "adaround")
    with pytest.raises(SearchSpaceError, match="scheme must come before ars"):
        validate_ordering("ars>scheme")
    space = load_search_space("thorough")
    assert any("ars" in o.split(">") for o in space.orderings)
    assert set(space.techniques["activation_range_search"]) == {"num_batches", "min_ratio", "num_candidates"}
    bad = space.to_dict()
    bad["activation_range_search"] = {"min_ratio": {"low": 0.0, "high": 2.0}}
    with pytest.raises(SearchSpaceError, match=r"activation_range_search.min_ratio"):
        load_search_space(bad)
    bad["activation_range_search"] = {"ratio": 0.5}
    with pytest.raises(SearchSpaceError, match=r"activation_range_search.ratio': unknown key"):
        load_search_space(bad)


def test_a_search_runs_it_as_a_stage(tmp_path: Path) -> None:
    from tests.search._tiny import Tiny, space

    s = space(orderings=["bnf>scheme>ars"], max_trials=2)
    s["activation_range_search"] = {"min_ratio": {"low": 0.2, "high": 0.9}, "num_candidates": [4, 8]}
    result = Tiny(0).make(tmp_path, search_space=s, progress=False).optimize(0.0, n_trials=2)
    for trial in result.study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert {"ars__min_ratio", "ars__num_candidates"} <= set(trial.params)
        assert [r["stage"] for r in trial.user_attrs["stage_scores"]] == ["bnf", "scheme", "ars"]
        assert "ars(" in trial.user_attrs["pipeline"]
    assert "ars" in result.pipeline.ordering.split(">") or result.best_stage < 3
