"""AIMET's encodings file formats, for Qualcomm's tools (``--quantization_overrides``) and AIMET itself.

Two layouts, as AIMET documents and writes them:

* ``0.6.1`` (the "legacy" layout; AIMET's encoding format specification, versions 0.4.0-0.6.1,
  ``Docs/api_docs/quantization_encoding_specification.rst`` in quic/aimet): ``activation_encodings`` and
  ``param_encodings`` map a tensor name to a list of encodings (one per channel), each
  ``{bitwidth, dtype, is_symmetric, max, min, offset, scale}`` with ``dtype`` ``"int"`` and ``is_symmetric``
  the strings ``"True"``/``"False"``; a float tensor is ``{bitwidth, dtype: "float"}``. Dequantization is
  ``x = (q + offset) * scale`` with ``q`` in ``[0, 2**bitwidth - 1]``. This is the layout
  :meth:`QuantSim.export_encodings` and :func:`export_onnx` write.
* ``1.0.0`` (AIMET 2's ``sim.export``): both sections are lists of named entries
  ``{name, dtype: "INT", enc_type: "PER_TENSOR" | "PER_CHANNEL", is_sym, bw, scale: [...], offset: [...]}``
  (a float tensor: ``{name, dtype: "FLOAT", enc_type: "PER_TENSOR", bw}``).

:func:`to_aimet_v1` and :func:`from_aimet_v1` convert between the two; :meth:`QuantSim.load_encodings`
reads both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._errors import InvalidInputError

__all__ = ["AIMET_LEGACY_VERSION", "AIMET_V1_VERSION", "from_aimet_v1", "to_aimet_v1"]

#: Version string of the dict-keyed layout (AIMET's encoding format up to 0.6.1).
AIMET_LEGACY_VERSION = "0.6.1"
#: Version string of AIMET 2's list layout.
AIMET_V1_VERSION = "1.0.0"
_SECTIONS = ("activation_encodings", "param_encodings")


def _entry_v1(name: str, entries: list[Mapping[str, Any]]) -> dict[str, Any]:
    first = entries[0]
    if str(first.get("dtype", "int")) == "float":
        return {"name": name, "dtype": "FLOAT", "enc_type": "PER_TENSOR", "bw": int(first["bitwidth"])}
    return {
        "name": name,
        "dtype": "INT",
        "enc_type": "PER_CHANNEL" if len(entries) > 1 else "PER_TENSOR",
        "is_sym": str(first.get("is_symmetric", "False")) == "True",
        "bw": int(first["bitwidth"]),
        "scale": [float(e["scale"]) for e in entries],
        "offset": [int(e["offset"]) for e in entries],
    }


def to_aimet_v1(data: Mapping[str, Any]) -> dict[str, Any]:
    """The ``1.0.0`` (list) layout of an encodings dict in the ``0.6.1`` (dict) layout."""
    for section in _SECTIONS:
        if not isinstance(data.get(section), Mapping):
            raise InvalidInputError(f"to_aimet_v1: {section!r} must be a mapping of tensor name to encodings")
    out: dict[str, Any] = {"version": AIMET_V1_VERSION}
    for section in _SECTIONS:
        out[section] = [_entry_v1(name, list(entries)) for name, entries in data[section].items()]
    out["excluded_layers"] = list(data.get("excluded_layers", []))
    for key, value in data.items():
        if key not in out and key != "version":
            out[key] = value
    return out


def _entries_legacy(entry: Mapping[str, Any], where: str) -> tuple[str, list[dict[str, Any]]]:
    try:
        name, dtype, bw = str(entry["name"]), str(entry["dtype"]).upper(), int(entry["bw"])
    except (KeyError, TypeError, ValueError) as err:
        raise InvalidInputError(f"{where}: an AIMET 1.0.0 entry needs 'name', 'dtype' and 'bw' ({err})") from None
    if dtype == "FLOAT":
        return name, [{"bitwidth": bw, "dtype": "float"}]
    scales, offsets = list(entry.get("scale", [])), list(entry.get("offset", []))
    if not scales or len(scales) != len(offsets):
        raise InvalidInputError(f"{where}: {name!r} needs as many 'scale' as 'offset' values (at least one)")
    sym = "True" if entry.get("is_sym") else "False"
    top = 2**bw - 1
    return name, [
        {
            "bitwidth": bw,
            "dtype": "int",
            "is_symmetric": sym,
            "scale": float(s),
            "offset": int(o),
            "min": float(o) * float(s),
            "max": float(top + int(o)) * float(s),
        }
        for s, o in zip(scales, offsets, strict=True)
    ]


def from_aimet_v1(data: Mapping[str, Any], where: str = "encodings") -> dict[str, Any]:
    """The ``0.6.1`` (dict) layout of an encodings dict in the ``1.0.0`` (list) layout."""
    out: dict[str, Any] = {"version": AIMET_LEGACY_VERSION}
    for section in _SECTIONS:
        items = data.get(section, [])
        if not isinstance(items, list):
            raise InvalidInputError(f"{where}: {section!r} of a 1.0.0 file must be a list of entries")
        out[section] = dict(_entries_legacy(e, where) for e in items)
    for key, value in data.items():
        if key not in out and key != "version":
            out[key] = value
    return out
