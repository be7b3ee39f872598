"""Encodings files against AIMET's documented encoding format, field by field.

Schema: AIMET's "Encoding Format Specification" (quic/aimet ``Docs/api_docs/quantization_encoding_specification.rst``):
``version`` a string; ``activation_encodings`` / ``param_encodings`` map a tensor name to a list of Encodings, one
per channel; an integer Encoding has exactly ``bitwidth`` (int), ``dtype`` ("int"), ``is_symmetric`` ("True" or
"False"), ``max`` (float), ``min`` (float), ``offset`` (int), ``scale`` (float); a float one ``dtype`` ("float") and
``bitwidth``. AIMET 2's 1.0.0 layout: lists of ``{name, dtype, enc_type, is_sym, bw, scale, offset}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from aq_search import QuantSim, export_onnx
from aq_search.examples.digits import DigitsCase
from aq_search.export import AIMET_LEGACY_VERSION, to_aimet_v1

onnx = pytest.importorskip("onnx")

_INT_FIELDS = {"bitwidth": int, "dtype": str, "is_symmetric": str, "max": float, "min": float, "offset": int, "scale": float}
_V1_INT_FIELDS = {"name": str, "dtype": str, "enc_type": str, "is_sym": bool, "bw": int, "scale": list, "offset": list}


def _check_legacy_entry(name: str, entry: dict[str, Any]) -> None:
    if entry["dtype"] == "float":
        assert set(entry) == {"bitwidth", "dtype"} and entry["bitwidth"] in (16, 32), name
        return
    assert set(entry) == set(_INT_FIELDS), f"{name}: fields {sorted(entry)}"
    for field, kind in _INT_FIELDS.items():
        assert isinstance(entry[field], kind) and not isinstance(entry[field], bool), f"{name}.{field}: {entry[field]!r}"
    assert entry["dtype"] == "int" and entry["is_symmetric"] in ("True", "False")
    assert 4 <= entry["bitwidth"] <= 32  # the spec's constraint
    bw, s, o = entry["bitwidth"], entry["scale"], entry["offset"]
    # x = (q + offset) * scale, q in [0, 2**bw - 1]: min and max are the grid's ends
    assert entry["min"] == pytest.approx(o * s, rel=1e-6, abs=1e-12), name
    assert entry["max"] == pytest.approx((2**bw - 1 + o) * s, rel=1e-6, abs=1e-12), name
    if entry["is_symmetric"] == "True":
        assert o == -(2 ** (bw - 1)), name


def _check_legacy(data: dict[str, Any]) -> None:
    assert isinstance(data["version"], str) and data["version"] == AIMET_LEGACY_VERSION
    for section in ("activation_encodings", "param_encodings"):
        assert isinstance(data[section], dict) and data[section], section
        for name, entries in data[section].items():
            assert isinstance(name, str) and isinstance(entries, list) and entries
            for entry in entries:
                _check_legacy_entry(name, entry)


@pytest.fixture(scope="module")
def mixed_sim(digits: DigitsCase) -> QuantSim:
    sim = QuantSim(digits.model, digits.dummy_input, default_param_bw=8, default_output_bw=8, activation_symmetric=False)
    sim.compute_encodings(digits.calibration_batches)
    sim.set_bitwidth("features.3", param_bw=4)
    sim.set_bitwidth("fc", output_bw=16)
    sim.set_bitwidth("features.10", param_bw=16, param_dtype="float")
    return sim


def test_sim_encodings_follow_aimet_legacy_schema(mixed_sim: QuantSim, tmp_path: Path) -> None:
    path = tmp_path / "enc.json"
    mixed_sim.export_encodings(path)
    data = json.loads(path.read_text())
    _check_legacy(data)
    assert data["param_encodings"]["features.10.weight"] == [{"bitwidth": 16, "dtype": "float"}]
    assert len(data["param_encodings"]["features.0.weight"]) == 16  # per channel: one Encoding per channel


def test_onnx_encodings_are_keyed_by_the_fp32_models_tensor_names(
    mixed_sim: QuantSim, digits: DigitsCase, tmp_path: Path
) -> None:
    export = export_onnx(mixed_sim, digits.dummy_input, tmp_path / "m.onnx", validate=False)
    data = json.loads(Path(export.encodings_path).read_text())
    _check_legacy(data)
    model = onnx.load(export.fp32_path)
    names = {i.name for i in model.graph.initializer} | {i.name for i in model.graph.input}
    names |= {o for n in model.graph.node for o in n.output}
    for section in ("activation_encodings", "param_encodings"):
        missing = [k for k in data[section] if k not in names]
        assert not missing, f"{section}: not tensors of {export.fp32_path}: {missing}"


def test_aimet_v1_layout_field_by_field_and_round_trip(mixed_sim: QuantSim, digits: DigitsCase, tmp_path: Path) -> None:
    legacy = mixed_sim.encodings()
    v1 = to_aimet_v1(legacy)
    assert v1["version"] == "1.0.0" and isinstance(v1["excluded_layers"], list)
    for section in ("activation_encodings", "param_encodings"):
        assert isinstance(v1[section], list) and len(v1[section]) == len(legacy[section])
        for entry in v1[section]:
            name = entry["name"]
            if entry["dtype"] == "FLOAT":
                assert set(entry) == {"name", "dtype", "enc_type", "bw"} and entry["bw"] == 16
                continue
            assert set(entry) == set(_V1_INT_FIELDS), f"{name}: fields {sorted(entry)}"
            for field, kind in _V1_INT_FIELDS.items():
                assert isinstance(entry[field], kind), f"{name}.{field}"
            assert entry["dtype"] == "INT" and entry["enc_type"] in ("PER_TENSOR", "PER_CHANNEL")
            channels = legacy[section][name]
            assert len(entry["scale"]) == len(entry["offset"]) == len(channels)
            assert (entry["enc_type"] == "PER_CHANNEL") == (len(channels) > 1)
            assert entry["scale"] == [c["scale"] for c in channels] and entry["offset"] == [c["offset"] for c in channels]
            assert entry["bw"] == channels[0]["bitwidth"] and entry["is_sym"] == (channels[0]["is_symmetric"] == "True")
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(v1))
    fresh = QuantSim(digits.model, digits.dummy_input)
    fresh.load_encodings(path)  # the 1.0.0 layout loads too, and gives the same model
    x = digits.split.test_x[:300]
    with torch.no_grad():
        assert torch.equal(fresh.model(x), mixed_sim.model(x))
    export = export_onnx(mixed_sim, digits.dummy_input, tmp_path / "v1.onnx", validate=False, encodings_format="1.0.0")
    assert json.loads(Path(export.encodings_path).read_text())["version"] == "1.0.0"
