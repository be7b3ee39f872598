"""Deployment target profiles: bad requests are refused with the rule and the fix; spaces are constrained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aq_search import AutoQuant, InvalidInputError, SearchSpaceError
from aq_search.examples.digits import DigitsCase, digits_case
from aq_search.search import load_search_space
from aq_search.targets import TARGETS, constrain_space, get_target


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsCase:
    return digits_case(tmp_path_factory.mktemp("digits"))


def make(digits: DigitsCase, tmp_path: Path, **kwargs: Any) -> AutoQuant:
    defaults: dict[str, Any] = {"param_bw": 8, "output_bw": 8, "results_dir": tmp_path / "aq", "search_space": "fast"}
    defaults.update(kwargs)
    return AutoQuant(digits.model, digits.dummy_input, digits.calibration_batches, digits.eval_callback, **defaults)


def test_unknown_target_names_the_choices() -> None:
    with pytest.raises(InvalidInputError, match="'tensorrt'"):
        get_target("trt")


@pytest.mark.parametrize(
    ("target", "param_bw", "output_bw"),
    [("tensorrt", 4, 4), ("tensorrt", 4, 8), ("tensorrt", 8, 16), ("qnn", 6, 8), ("qnn", 8, 4), ("onnxruntime", 8, 4)],
)
def test_bitwidths_the_runtime_cannot_run_are_refused(
    digits: DigitsCase, tmp_path: Path, target: str, param_bw: int, output_bw: int
) -> None:
    with pytest.raises(InvalidInputError) as info:
        make(digits, tmp_path, target=target, param_bw=param_bw, output_bw=output_bw)
    text = str(info.value)
    assert f"target {target!r}" in text and f"W{param_bw}A{output_bw}" in text
    assert "Rule:" in text and "Fix:" in text and "http" in text


@pytest.mark.parametrize(
    ("target", "param_bw", "output_bw"), [("tensorrt", 8, 8), ("qnn", 4, 16), ("qnn", 8, 16), ("onnxruntime", 4, 8)]
)
def test_bitwidths_the_runtime_runs_are_accepted(
    digits: DigitsCase, tmp_path: Path, target: str, param_bw: int, output_bw: int
) -> None:
    aq = make(digits, tmp_path, target=target, param_bw=param_bw, output_bw=output_bw)
    assert aq.deployment_target.name == target and aq.space.target == target


def test_generic_keeps_the_space_unchanged(digits: DigitsCase, tmp_path: Path) -> None:
    space = load_search_space("fast")
    aq = make(digits, tmp_path, param_bw=3, output_bw=5)  # anything goes
    assert aq.deployment_target is TARGETS["generic"]
    assert aq.space == space and aq.space.fingerprint() == space.fingerprint()
    assert "target" not in space.to_dict()


def test_amp_candidates_are_limited_to_the_target() -> None:
    space = load_search_space(
        {
            **load_search_space("fast").to_dict(),
            "amp": {"candidate_sets": [["w{param_bw}a{output_bw}", "w8a8", "w8a16", "w6a8"], ["w8a8", "fp32"]]},
        }
    )
    trt = constrain_space(space, get_target("tensorrt"), 8, 8)
    assert trt.amp.candidate_sets == (("w8a8", "fp32"),)  # 16-bit and 6-bit integers dropped, w8a8 alone is no set
    qnn = constrain_space(space, get_target("qnn"), 4, 8)
    assert qnn.amp.candidate_sets == (("w4a8", "w8a8", "w8a16"),)  # fp32 is not run on HTP: the second set is gone
    assert qnn.target == "qnn" and constrain_space(space, get_target("generic"), 4, 8) is space


def test_fixed_amp_candidates_are_checked(digits: DigitsCase, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"target 'tensorrt' does not run \['w4a8'\].*Fix"):
        make(digits, tmp_path, target="tensorrt", mixed_precision_candidates=["w8a8", "w4a8"])
    make(digits, tmp_path, target="qnn", mixed_precision_candidates=["w8a8", "w8a16"])


def test_yaml_target_key(digits: DigitsCase, tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    text = (Path(load_search_space("fast").source)).read_text() + "target: tensorrt\n"
    path.write_text(text)
    aq = make(digits, tmp_path, search_space=str(path))
    assert aq.deployment_target.name == "tensorrt"
    assert make(digits, tmp_path, search_space=str(path), target="qnn").deployment_target.name == "qnn"  # the argument wins
    path.write_text(text.replace("target: tensorrt", "target: tpu"))
    with pytest.raises(SearchSpaceError, match=r"key 'target'.*tensorrt"):
        load_search_space(str(path))


def test_tensorrt_run_inference_uses_signed_symmetric_activations(digits: DigitsCase, tmp_path: Path) -> None:
    sim, _ = make(digits, tmp_path, target="tensorrt").run_inference()
    enabled = [q for q in sim.activation_quantizers.values() if q.enabled]
    assert enabled and all(q.symmetric and q.quant_range == (-128, 127) for q in enabled)
    assert all(q.zero_point is not None and int(q.zero_point.abs().max()) == 0 for q in enabled)
    sim_q, _ = make(digits, tmp_path / "q", target="qnn").run_inference()
    assert all(not q.symmetric for q in sim_q.activation_quantizers.values() if q.enabled)
