"""load_result: rebuild a search's best model from its results folder, bit for bit, with safe loaders only."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from aq_search import QuantSim
from aq_search._version import __version__
from aq_search.examples.digits import DigitsCase
from aq_search.export import LoadedResult, ResultLoadError, load_result

try:  # the techniques package lands in parallel; the pipeline parser needs all of its configs
    from aq_search.search import Pipeline, SchemeConfig, Stage, pipeline_from_dict
    from aq_search.search._result import RESULTS_VERSION
    from aq_search.techniques import BatchNormFoldConfig, CLEConfig, equalize_model, fold_all_batch_norms

    pipeline_from_dict({"stages": []})
    _MISSING = ""
except ImportError as err:  # pragma: no cover - only while aq_search.techniques is incomplete
    _MISSING = f"aq_search.techniques is not complete yet ({err})"

pytestmark = pytest.mark.skipif(bool(_MISSING), reason=_MISSING)


def _write_like_finish(out: Path, sim: QuantSim, pipeline: Any, dummy: torch.Tensor, **summary: Any) -> None:
    """The files ``AutoQuant._finish`` writes, written the same way."""
    out.mkdir(parents=True, exist_ok=True)
    sim.export_encodings(out / "encodings.json")
    torch.save(sim.model.state_dict(), out / "model_state.pt")
    (out / "pipeline.yaml").write_text(yaml.safe_dump(pipeline.to_dict(), sort_keys=False), encoding="utf-8")
    data = {
        "results_version": RESULTS_VERSION,
        "aq_search_version": __version__,
        "fp32_accuracy": 0.99,
        "accuracy": 0.98,
        "pipeline": str(pipeline),
        "param_bw": 4,
        "output_bw": 8,
        "dummy_input_shapes": list(dummy.shape),
        **summary,
    }
    (out / "summary.json").write_text(json.dumps(data, indent=1), encoding="utf-8")


@pytest.fixture(scope="module")
def built(digits: DigitsCase, tmp_path_factory: pytest.TempPathFactory) -> tuple[QuantSim, Path, Any]:
    """A sim built by hand the way a pipeline would: BN folded, per-tensor scheme, mixed bit-widths,
    an AdaRound rounding and a corrected bias, saved as a results folder."""
    config = BatchNormFoldConfig()
    folded = fold_all_batch_norms(digits.model, digits.dummy_input, config)
    scheme = SchemeConfig(pair="tf/percentile", per_channel=False)
    sim = QuantSim(
        folded,
        digits.dummy_input,
        param_quant_scheme="tf",
        activation_quant_scheme="percentile",
        default_param_bw=4,
        default_output_bw=8,
        per_channel=False,
    )
    sim.compute_encodings(digits.calibration_batches)
    layers = sim.quantized_layers
    sim.set_bitwidth(layers[0], param_bw=8, output_bw=16)
    sim.set_bitwidth(layers[-1], param_bw=16, param_dtype="float")
    sim.set_enabled("pool", output=False)
    q = sim.param_quantizer(layers[2])
    g = torch.Generator().manual_seed(1)
    q.rounding = (torch.rand(sim.float_weight(layers[2]).shape, generator=g) > 0.5).to(torch.uint8)
    q.frozen = True
    bias = sim.layer(layers[1]).bias
    assert bias is not None
    with torch.no_grad():
        bias.add_(0.01)  # what bias correction leaves behind
    pipeline = Pipeline((Stage("bnf", config), Stage("scheme", scheme)))
    root = tmp_path_factory.mktemp("results")
    _write_like_finish(root / "best", sim, pipeline, digits.dummy_input)
    return sim, root, pipeline


def test_rebuilds_bit_for_bit(built: tuple[QuantSim, Path, Any], digits: DigitsCase) -> None:
    sim, root, pipeline = built
    loaded = load_result(root, digits.model, digits.dummy_input)
    assert isinstance(loaded, LoadedResult)
    assert loaded.pipeline == pipeline
    assert loaded.model is loaded.sim.model
    assert loaded.accuracy == pytest.approx(0.98)
    assert loaded.results_dir == os.fspath(root / "best")
    x = digits.split.test_x
    with torch.no_grad():
        assert torch.equal(loaded.model(x), sim.model(x))
    assert loaded.sim.encodings() == sim.encodings()
    assert loaded.sim.per_channel is False
    layer = sim.quantized_layers[2]
    rounding = loaded.sim.param_quantizer(layer).rounding
    assert rounding is not None and rounding.dtype == torch.uint8 and loaded.sim.param_quantizer(layer).frozen
    assert loaded.sim.param_quantizer(sim.quantized_layers[-1]).dtype == "float"
    assert not loaded.sim.output_quantizer("pool").enabled


def test_loads_from_best_folder_and_default_dummy(built: tuple[QuantSim, Path, Any], digits: DigitsCase) -> None:
    sim, root, _ = built
    loaded = load_result(root / "best", digits.model)  # zeros of the recorded shapes trace the model
    x = digits.split.test_x[:50]
    with torch.no_grad():
        assert torch.equal(loaded.model(x), sim.model(x))


def test_loaded_result_exports(built: tuple[QuantSim, Path, Any], digits: DigitsCase, tmp_path: Path) -> None:
    _, root, _ = built
    loaded = load_result(root, digits.model, digits.dummy_input)
    export = loaded.export_onnx(tmp_path / "m.onnx", validation_inputs=digits.split.test_x)
    assert export.validation is not None and export.validation.top1_agreement is not None
    assert export.validation.top1_agreement >= 0.99


def test_rebuilds_equalized_model(digits: DigitsCase, tmp_path: Path) -> None:
    """CLE changes the graph (ReLU6 -> ReLU where it rescales): load_result re-applies it."""
    bnf, cle = BatchNormFoldConfig(), CLEConfig(high_bias_absorption=True)
    model = equalize_model(fold_all_batch_norms(digits.model, digits.dummy_input, bnf), digits.dummy_input, cle)
    sim = QuantSim(model, digits.dummy_input, default_param_bw=4, default_output_bw=8)
    sim.compute_encodings(digits.calibration_batches)
    pipeline = Pipeline((Stage("bnf", bnf), Stage("cle", cle), Stage("scheme", SchemeConfig())))
    _write_like_finish(tmp_path / "best", sim, pipeline, digits.dummy_input)
    loaded = load_result(tmp_path, digits.model, digits.dummy_input)
    assert [type(m).__name__ for m in loaded.model.modules()] == [type(m).__name__ for m in sim.model.modules()]
    x = digits.split.test_x
    with torch.no_grad():
        assert torch.equal(loaded.model(x), sim.model(x))


def _copy(root: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(root, target)
    return target / "best"


def test_missing_files_are_named(built: tuple[QuantSim, Path, Any], digits: DigitsCase, tmp_path: Path) -> None:
    _, root, _ = built
    best = _copy(root, tmp_path)
    (best / "pipeline.yaml").unlink()
    (best / "model_state.pt").unlink()
    with pytest.raises(ResultLoadError, match=r"missing pipeline\.yaml, model_state\.pt") as err:
        load_result(best, digits.model, digits.dummy_input)
    assert "AutoQuant.optimize()" in str(err.value)
    with pytest.raises(ResultLoadError, match=r"does not exist"):
        load_result(tmp_path / "nowhere", digits.model)


def test_incompatible_version_names_both(built: tuple[QuantSim, Path, Any], digits: DigitsCase, tmp_path: Path) -> None:
    _, root, _ = built
    best = _copy(root, tmp_path)
    summary = json.loads((best / "summary.json").read_text())
    summary.update(results_version=99, aq_search_version="9.9.9")
    (best / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ResultLoadError, match=r"results_version 99 \(written by aq-search 9\.9\.9\).*reads results_version 1"):
        load_result(best, digits.model, digits.dummy_input)


def test_pickled_objects_are_refused(built: tuple[QuantSim, Path, Any], digits: DigitsCase, tmp_path: Path) -> None:
    _, root, _ = built
    best = _copy(root, tmp_path)
    torch.save({"payload": _Unsafe()}, best / "model_state.pt")
    with pytest.raises(ResultLoadError, match=r"weights_only=True"):
        load_result(best, digits.model, digits.dummy_input)
    assert not _Unsafe.loaded


def test_other_model_is_refused(built: tuple[QuantSim, Path, Any], digits: DigitsCase) -> None:
    _, root, _ = built
    other = copy.deepcopy(digits.model)
    other.fc = nn.Linear(64, 7)
    with pytest.raises(ResultLoadError, match=r"does not match the model rebuilt.*same FP32 model"):
        load_result(root, other, digits.dummy_input)


class _Unsafe:
    loaded = False

    def __reduce__(self) -> tuple[Any, ...]:
        return (_mark_loaded, ())


def _mark_loaded() -> None:
    _Unsafe.loaded = True
