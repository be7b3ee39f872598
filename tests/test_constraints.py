"""Declared parameter constraints: one check, one message format, for Python arguments and YAML alike."""

from __future__ import annotations

import dataclasses
import math

import pytest

from aq_search._constraints import Boolean, Interval, NoneValue, Options, Pair, check_parameter
from aq_search._errors import InvalidInputError, SearchSpaceError
from aq_search.amp import MixedPrecisionConfig, choose_mixed_precision
from aq_search.search import load_search_space
from aq_search.techniques import AdaRoundParams, BiasCorrectionConfig, CLEConfig


@pytest.mark.parametrize(
    ("constraints", "value", "ok"),
    [
        ([Interval(int, 1, None)], 1, True),
        ([Interval(int, 1, None)], 0, False),
        ([Interval(int, 1, None)], True, False),
        ([Interval(int, 1, None)], 2.0, False),
        ([Interval(float, 0.0, 1.0, closed="right")], 0.0, False),
        ([Interval(float, 0.0, 1.0, closed="right")], 1, True),
        ([Interval(float, 0.0, None)], math.nan, False),
        ([Interval(float, 0.0, None)], math.inf, False),
        ([Options("a", "b")], "a", True),
        ([Options("a", "b")], "c", False),
        ([Options(1, 2)], True, False),
        ([Boolean()], 1, False),
        ([Interval(int, 1, None), NoneValue()], None, True),
    ],
)
def test_constraints_accept_what_they_declare(constraints: list, value: object, ok: bool) -> None:
    if ok:
        check_parameter("x", "Y", value, constraints)
    else:
        with pytest.raises(InvalidInputError, match=r"^The 'x' parameter of Y must be .+\. Got .+ instead\.$"):
            check_parameter("x", "Y", value, constraints)


def test_message_format_and_conversion() -> None:
    with pytest.raises(InvalidInputError) as err:
        check_parameter("n", "Thing", 0, [Interval(int, 1, None), NoneValue()])
    assert str(err.value) == "The 'n' parameter of Thing must be an int >= 1 or None. Got 0 instead."
    assert check_parameter("r", "Thing", 1, [Interval(float, 0.0, 2.0)]) == 1.0
    assert isinstance(check_parameter("r", "Thing", 1, [Interval(float, 0.0, 2.0)]), float)


def test_configs_declare_their_constraints() -> None:
    assert set(CLEConfig._parameter_constraints) >= {"high_bias_absorption", "replace_relu6", "tolerance"}
    with pytest.raises(InvalidInputError, match="The 'replace_relu6' parameter of CLEConfig must be one of"):
        CLEConfig(replace_relu6="sometimes")
    assert CLEConfig(num_std=3).num_std == 3.0 and isinstance(CLEConfig(num_std=3).num_std, float)


def test_yaml_values_go_through_the_same_declaration() -> None:
    data = load_search_space("fast").to_dict()
    data["cle"] = {"replace_relu6": ["always", "sometimes"]}
    with pytest.raises(SearchSpaceError) as err:
        load_search_space(data)
    # the file and key, then the config's own wording
    assert "key 'cle.replace_relu6'" in str(err.value)
    assert "The 'replace_relu6' parameter of CLEConfig must be one of" in str(err.value)
    with pytest.raises(InvalidInputError) as direct:
        CLEConfig(replace_relu6="sometimes")
    assert str(direct.value) in str(err.value)
    assert BiasCorrectionConfig.check_field("num_batches", 3) == 3


@pytest.mark.parametrize(
    ("section", "field", "python", "yaml_value"),
    [
        ("adaround", "num_iterations", {"num_iterations": 0}, 0),
        ("adaround", "warm_start", {"warm_start": 1.5}, {"low": 0.1, "high": 1.5}),
        ("adaround", "reg_param", {"reg_param": -1.0}, [0.01, -1.0]),
        ("amp", "num_samples_for_phase_1", {"num_samples_for_phase_1": 0}, 0),
    ],
)
def test_adaround_and_amp_yaml_and_python_give_the_same_message(
    section: str, field: str, python: dict, yaml_value: object
) -> None:
    config_class = AdaRoundParams if section == "adaround" else MixedPrecisionConfig
    base = {"num_batches": 1} if section == "adaround" else {}
    with pytest.raises(InvalidInputError) as direct:
        config_class(**base, **python)
    assert str(direct.value).startswith(f"The '{field}' parameter of {config_class.__name__} must be ")
    data = load_search_space("default").to_dict()
    data[section][field] = yaml_value
    with pytest.raises(SearchSpaceError) as from_yaml:
        load_search_space(data)
    assert f"key '{section}.{field}'" in str(from_yaml.value)
    assert str(from_yaml.value).endswith(str(direct.value))


def test_adaround_params_declare_every_field_and_convert() -> None:
    assert set(AdaRoundParams._parameter_constraints) == {f.name for f in dataclasses.fields(AdaRoundParams)}
    params = AdaRoundParams(num_batches=2, reg_param=1, beta_range=[20, 2])  # type: ignore[arg-type]
    assert params.reg_param == 1.0 and isinstance(params.reg_param, float)
    assert params.beta_range == (20.0, 2.0)
    with pytest.raises(InvalidInputError) as err:
        AdaRoundParams(num_batches=1, beta_range=(2, 20))
    assert str(err.value) == (
        "The 'beta_range' parameter of AdaRoundParams must be a pair (start, end) of positive numbers with start >= end, "
        "such as (20, 2). Got (2, 20) instead."
    )
    assert str(Pair(Interval(int, 0, None))) == "a pair (start, end) each an int >= 0"
    with pytest.raises(InvalidInputError, match=r"^The 'use_quantized_inputs' parameter of AdaRoundParams must be a bool\."):
        AdaRoundParams(num_batches=1, use_quantized_inputs=1)  # type: ignore[arg-type]


def test_amp_config_and_choose_mixed_precision_share_the_declaration() -> None:
    assert set(MixedPrecisionConfig._parameter_constraints) >= {"cost", "phase1_metric", "phase2_search", "refine_evals"}
    with pytest.raises(InvalidInputError) as err:
        MixedPrecisionConfig(phase2_search="random")
    assert str(err.value) == (
        "The 'phase2_search' parameter of MixedPrecisionConfig must be one of ['binary', 'linear']. Got 'random' instead."
    )
    with pytest.raises(InvalidInputError) as via_function:
        choose_mixed_precision(None, ["w8a8", "w4a8"], lambda m, n=None: 1.0, 0.01, phase2_search="random")  # type: ignore[arg-type]
    assert str(via_function.value) == str(err.value)


def test_hand_checked_arguments_use_the_same_wording() -> None:
    from aq_search.amp import set_mixed_precision
    from aq_search.techniques._config import bad_argument

    with pytest.raises(InvalidInputError) as err:
        set_mixed_precision(None, {})  # type: ignore[arg-type]
    assert str(err.value) == "The 'sim' parameter of set_mixed_precision must be a QuantSim. Got None instead."
    assert str(bad_argument("n", "f", "an int", [1, 2])) == "The 'n' parameter of f must be an int. Got [1, 2] instead."
    assert str(bad_argument("n", "f", "an int", object())) == "The 'n' parameter of f must be an int. Got a object instead."
