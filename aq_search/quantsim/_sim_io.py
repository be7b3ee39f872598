"""A QuantSim's encodings as JSON: the dict, writing it, and loading it back."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._errors import InvalidInputError
from ._sim_build import float_weight

if TYPE_CHECKING:
    from ._sim import QuantSim

__all__ = ["ENCODINGS_VERSION", "encodings_dict", "export_encodings", "load_encodings"]

#: AIMET's encoding format version whose layout the encodings files follow (see ``aq_search/export/_aimet.py``).
ENCODINGS_VERSION = "0.6.1"


def encodings_dict(sim: QuantSim) -> dict[str, Any]:
    """All encodings as a JSON-able dict (the content of :meth:`export_encodings`)."""
    act: dict[str, Any] = {}
    par: dict[str, Any] = {}
    for name, q in sim._activation.items():
        if q.enabled:
            act[name] = q.encoding_dict()
    for name, q in sim._param.items():
        if q.enabled:
            par[name] = q.encoding_dict()
    return {
        "version": ENCODINGS_VERSION,
        "activation_encodings": act,
        "param_encodings": par,
        "quantizer_args": {
            "param_quant_scheme": sim._param_estimator.to_dict(),
            "activation_quant_scheme": sim._act_estimator.to_dict(),
            "per_channel": sim.per_channel,
            "activation_symmetric": sim.activation_symmetric,
            "default_param_bw": sim.default_param_bw,
            "default_output_bw": sim.default_output_bw,
        },
    }


def export_encodings(sim: QuantSim, path: str | os.PathLike[str]) -> None:
    """Write the encodings JSON (AIMET-style ``activation_encodings`` / ``param_encodings``)."""
    data = encodings_dict(sim)
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
    os.replace(tmp, path)


def load_encodings(sim: QuantSim, path: str | os.PathLike[str] | Mapping[str, Any], *, strict: bool = True) -> None:
    """Load encodings written by :meth:`export_encodings`; the sim then reproduces the exported outputs.

    AIMET's ``1.0.0`` list layout is read too (see :func:`aq_search.export.to_aimet_v1`).

    Quantizers absent from the file are disabled (the file says they were float); with
    ``strict=True`` names the sim does not know are an error.
    """
    if isinstance(path, Mapping):
        data: Any = path
        where = "encodings dict"
    else:
        where = os.fspath(path)
        try:
            with open(where, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            raise InvalidInputError(f"encodings file {where!r} does not exist") from None
        except json.JSONDecodeError as err:
            raise InvalidInputError(f"encodings file {where!r} is not valid JSON: {err}") from None
    if not isinstance(data, Mapping) or "activation_encodings" not in data or "param_encodings" not in data:
        raise InvalidInputError(f"{where}: not an encodings file (needs 'activation_encodings' and 'param_encodings')")
    if isinstance(data["activation_encodings"], list) or isinstance(data["param_encodings"], list):
        from ..export._aimet import from_aimet_v1  # AIMET 1.0.0's list layout

        data = from_aimet_v1(data, where)
    act, par = data["activation_encodings"], data["param_encodings"]
    unknown = sorted(set(act) - set(sim._activation)) + sorted(set(par) - set(sim._param))
    if unknown and strict:
        raise InvalidInputError(
            f"{where}: encodings for tensors this sim does not have: {unknown[:10]}"
            f"{' ...' if len(unknown) > 10 else ''}. Was it exported from a different model or pipeline? "
            "Use strict=False to load the rest."
        )
    for name, q in sim._param.items():
        if name in par:
            q.enabled = True
            module = sim.layer(name.rpartition(".")[0])
            channels = float_weight(module).shape[q.axis] if q.axis is not None else 1
            if q.dtype == "int" and len(par[name]) != channels and par[name][0].get("dtype", "int") == "int":
                raise InvalidInputError(f"{where}: {name!r} has {len(par[name])} channel encodings, the weight has {channels}")
            q.set_encoding_dict(par[name], name=name)
            q.frozen = q.rounding is not None
        else:
            q.enabled = False
    for name, q in sim._activation.items():
        if name in act:
            q.enabled = True
            q.set_encoding_dict(act[name], name=name)
        else:
            q.enabled = False
