"""Declared parameter constraints: one check, one message format, for Python arguments and YAML alike."""

from __future__ import annotations

import math

import pytest

from aq_search._constraints import Boolean, Interval, NoneValue, Options, check_parameter
from aq_search._errors import InvalidInputError, SearchSpaceError
from aq_search.search import load_search_space
from aq_search.techniques import BiasCorrectionConfig, CLEConfig


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
