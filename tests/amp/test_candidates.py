from __future__ import annotations

import enum

import pytest

from aq_search import InvalidInputError
from aq_search.amp import Candidate, MixedPrecisionConfig, parse_candidate, parse_candidates


class QuantizationDataType(enum.Enum):
    """Stands in for aimet_common.defs.QuantizationDataType (members named int and float)."""

    int = 1
    float = 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("w4a8", Candidate(4, 8)),
        ("W8A16", Candidate(8, 16)),
        (" w2a4 ", Candidate(2, 4)),
        ("fp16", Candidate(16, 16, "float", "float")),
        ("FP32", Candidate(32, 32, "float", "float")),
        ("w8afp16", Candidate(8, 16, "int", "float")),
        ("w16a16", Candidate(16, 16)),
    ],
)
def test_strings(text: str, expected: Candidate) -> None:
    assert parse_candidate(text) == expected


def test_canonical_names_round_trip() -> None:
    for text in ("w4a8", "w8a16", "fp16", "fp32", "w8afp16", "wfp16a8"):
        cand = parse_candidate(text)
        assert cand.name == text
        assert parse_candidate(cand.name) == cand
        assert str(cand) == text


def test_aimet_tuples_put_the_activation_first() -> None:
    assert parse_candidate(((8, "int"), (4, "int"))) == Candidate(param_bw=4, activation_bw=8)
    assert parse_candidate(((16, QuantizationDataType.int), (8, QuantizationDataType.int))).name == "w8a16"
    assert parse_candidate(((16, QuantizationDataType.float), (16, QuantizationDataType.float))).name == "fp16"
    assert parse_candidate(((8, int), (4, int))).name == "w4a8"
    assert parse_candidate([[8, "int"], [4, "int"]]).name == "w4a8"  # as it comes back from YAML/JSON
    assert Candidate(4, 8).to_aimet() == ((8, "int"), (4, "int"))


@pytest.mark.parametrize("bad", ["w4x8", "w4", "a8w4", "int8", "w4a8 fp16", "", "w1a8", "w4a32", "w4afp8"])
def test_malformed_strings_name_the_string_and_the_form(bad: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_candidate(bad)
    message = str(info.value)
    assert repr(bad) in message
    assert "w<param bits>a<activation bits>" in message or "bit" in message


@pytest.mark.parametrize(
    "bad",
    [
        ((8, "int"),),
        ((8, "int"), (4, "bfloat")),
        ((8, "int"), (4.0, "int")),
        ((32, "int"), (8, "int")),
        ((8, "float"), (8, "int")),
        8,
        None,
    ],
)
def test_malformed_tuples(bad: object) -> None:
    with pytest.raises(InvalidInputError, match="candidate"):
        parse_candidate(bad)  # type: ignore[arg-type]


def test_fewer_than_two_candidates() -> None:
    with pytest.raises(InvalidInputError, match="at least two candidates"):
        parse_candidates(["w8a8"])
    with pytest.raises(InvalidInputError, match="at least two candidates"):
        parse_candidates([])
    with pytest.raises(InvalidInputError, match=r"list of two or more candidates.*Got 'w8a8'"):
        parse_candidates("w8a8")


def test_duplicates_are_named() -> None:
    with pytest.raises(InvalidInputError, match="'w4a8' twice"):
        parse_candidates(["w4a8", "w8a8", ((8, "int"), (4, "int"))])


def test_any_set_of_two_or_more_works() -> None:
    # no rule that every candidate be above a baseline: lower-activation and float candidates mix freely
    names = [c.name for c in parse_candidates(["w4a4", "w8a16", "fp16", "w16a4"])]
    assert names == ["w4a4", "w8a16", "fp16", "w16a4"]


def test_config_normalizes_and_round_trips() -> None:
    config = MixedPrecisionConfig(candidates=("W8A8", ((8, "int"), (4, "int"))), num_samples_for_phase_1=64)
    assert config.candidates == ("w8a8", "w4a8")
    data = config.to_dict()
    assert data["candidates"] == ["w8a8", "w4a8"]
    assert MixedPrecisionConfig.from_dict(data) == config


@pytest.mark.parametrize(
    ("field", "value"),
    [("cost", "latency"), ("phase1_metric", "hessian"), ("phase2_search", "random"), ("num_samples_for_phase_1", 0)],
)
def test_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(InvalidInputError, match=f"'{field}' parameter of MixedPrecisionConfig"):
        MixedPrecisionConfig(**{field: value})  # type: ignore[arg-type]


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(InvalidInputError, match="num_samples_phase_1"):
        MixedPrecisionConfig.from_dict({"candidates": ["w8a8", "w4a8"], "num_samples_phase_1": 5}, where="space.yaml")
