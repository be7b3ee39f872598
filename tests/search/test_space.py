from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from aq_search import SearchSpaceError
from aq_search.search import builtin_spaces, load_search_space, validate_ordering
from aq_search.search._space import Choice, FloatRange, IntRange


@pytest.mark.parametrize("name", ["default", "fast", "thorough"])
def test_builtin_spaces_load_and_round_trip(name: str) -> None:
    space = load_search_space(name)
    assert space.name == name and space.orderings
    again = load_search_space(yaml.safe_load(yaml.safe_dump(space.to_dict())))
    assert again.to_dict() == space.to_dict()
    assert again.fingerprint() == space.fingerprint()


def test_fast_has_no_adaround_and_default_replays_aimet() -> None:
    assert not any("adaround" in o for o in load_search_space("fast").orderings)
    default = load_search_space("default")
    assert default.orderings[0] == "scheme>bnf>cle>adaround"
    assert isinstance(default.adaround.num_iterations, IntRange) and default.adaround.num_iterations.log
    assert isinstance(default.adaround.reg_param, FloatRange)
    assert isinstance(default.scheme.candidates, Choice) and "select" in default.scheme.candidates.values
    assert set(builtin_spaces()) >= {"default", "fast", "thorough"}


@pytest.mark.parametrize(
    ("ordering", "message"),
    [
        ("cle>bnf", "put bnf before cle"),
        ("scheme>cle", "put bnf before cle"),
        ("bnf>adaround>cle", "must come before the sim techniques"),
        ("adaround>scheme", "scheme must come before"),
        ("bnf>bnf", "appears twice"),
        ("bnf>quantize", "unknown technique 'quantize'"),
        ("", "non-empty"),
    ],
)
def test_invalid_orderings_are_named(ordering: str, message: str) -> None:
    with pytest.raises(SearchSpaceError, match=message):
        validate_ordering(ordering)


def test_valid_orderings() -> None:
    assert validate_ordering("bnf>cle>scheme>amp>adaround") == ("bnf", "cle", "scheme", "amp", "adaround")
    assert validate_ordering("scheme>bnf>cle>adaround>amp")[-1] == "amp"


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    data = load_search_space("fast").to_dict()
    data["adaround"]["reg_parm"] = 0.1
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SearchSpaceError, match=r"mine\.yaml: key 'adaround\.reg_parm': unknown key"):
        load_search_space(path)
    data = load_search_space("fast").to_dict()
    data["tempo"] = 3
    with pytest.raises(SearchSpaceError, match="key 'tempo': unknown key"):
        load_search_space(data)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("adaround", "num_iterations", {"low": 100, "high": 10}, "low \\(100\\) must not exceed high"),
        ("adaround", "warm_start", {"low": 0.0, "high": 0.5, "log": True}, "log range needs low > 0"),
        ("adaround", "num_batches", "four", "The .num_batches. parameter of AdaRoundParams must be an int >= 1"),
        ("amp", "candidate_sets", [["w8a8"]], "at least two candidates"),
        ("amp", "candidate_sets", [["w8a8", "int4"]], "'int4' is not a candidate"),
        ("scheme", "candidates", ["tf_enhanced"], "'<param scheme>/<activation scheme>'"),
        ("scheme", "candidates", ["tf/sqnrr"], "Unknown quant scheme"),
        ("scheme", "select_by", "accuracy", "must be one of eval, sqnr"),
        ("pruner", "type", "hyperband", "must be none, median or percentile"),
    ],
)
def test_bad_values_are_named(section: str, key: str, value: object, message: str) -> None:
    data = load_search_space("default").to_dict()
    data[section][key] = value
    with pytest.raises(SearchSpaceError, match=message) as info:
        load_search_space(data)
    assert f"'{section}." in str(info.value)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(SearchSpaceError, match="neither a built-in name"):
        load_search_space("no-such-space")
    bad = tmp_path / "bad.yaml"
    bad.write_text("orderings: [bnf\n  - x")
    with pytest.raises(SearchSpaceError, match="invalid YAML"):
        load_search_space(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("name: x\n")
    with pytest.raises(SearchSpaceError, match="key 'orderings'"):
        load_search_space(empty)


def test_a_key_given_twice_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("orderings: [bnf>scheme]\nmax_trials: 3\nmax_trials: 5\n")
    with pytest.raises(SearchSpaceError, match=r"(?s)twice\.yaml: invalid YAML: .*'max_trials' appears twice.*line 3"):
        load_search_space(path)
    nested = tmp_path / "nested.yaml"
    nested.write_text("orderings: [bnf>scheme>adaround]\nadaround:\n  num_batches: 2\n  num_batches: 4\n")
    with pytest.raises(SearchSpaceError, match="'num_batches' appears twice"):
        load_search_space(nested)
