"""A study's identity: every setting that changes its results, checked when a run resumes or a worker joins.

A study records its identity once, in one user attribute (with the FP32 accuracy, so a worker starting
beside another never sees half of it). A later run on the same study must have the same identity:
otherwise its trials would score another model, data, space or setting than the trials already there,
and the best of them would be reported as one result. A mismatch is a :class:`StudyMismatchError`
naming each differing setting, its recorded value and the new one.

A resumed run (a study that already has trials) also seeds its sampler differently
(:func:`resumed_sampler_seed`): with the first run's seed, a deterministic sampler would propose the
configurations the study already ran again.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .._errors import StudyMismatchError

__all__ = ["IDENTITY_KEYS", "check_identity", "resumed_sampler_seed", "study_identity"]

#: the settings a study's identity holds, in the order a mismatch names them
IDENTITY_KEYS = (
    "model_fingerprint",
    "data_fingerprint",
    "space_fingerprint",
    "param_bw",
    "output_bw",
    "allowed_accuracy_drop",
    "quant_scheme",
    "per_channel",
    "adaround_params",
    "amp_candidates",
    "seed",
    "target",
    "max_relative_bops",
)

_MISSING = "<not recorded>"


def _plain(value: Any) -> Any:
    """A JSON-representable form of a setting (dataclasses as dicts, tuples as lists), compared as JSON."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def study_identity(
    *,
    model_fingerprint: str,
    data_fingerprint: str,
    space_fingerprint: str,
    param_bw: int,
    output_bw: int,
    allowed_accuracy_drop: float,
    quant_scheme: str,
    per_channel: bool | None,
    adaround_params: Any,
    amp_candidates: Sequence[str] | None,
    seed: int | None,
    target: str = "generic",
    max_relative_bops: float | None = None,
) -> dict[str, Any]:
    """The identity of a study: what changes results (the space by its content hash).

    ``adaround_params`` and ``amp_candidates`` are the settings the user fixed (``None`` when the space
    searches them); ``seed`` is the run's seed (AdaRound, calibration order), not the sampler's, which
    differs between workers on purpose. ``target`` is the deployment target's name (it fixes the
    activation grid), ``max_relative_bops`` the cost budget (it decides what meets the target).
    """
    return {
        "model_fingerprint": model_fingerprint,
        "data_fingerprint": data_fingerprint,
        "space_fingerprint": space_fingerprint,
        "param_bw": param_bw,
        "output_bw": output_bw,
        "allowed_accuracy_drop": allowed_accuracy_drop,
        "quant_scheme": quant_scheme,
        "per_channel": per_channel,
        "adaround_params": _plain(adaround_params),
        "amp_candidates": _plain(list(amp_candidates) if amp_candidates is not None else None),
        "seed": seed,
        "target": target,
        "max_relative_bops": max_relative_bops,
    }


def _short(value: Any, width: int = 80) -> str:
    text = value if value == _MISSING else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def check_identity(recorded: Mapping[str, Any], identity: Mapping[str, Any], *, study: str, storage: str) -> None:
    """Raise :class:`StudyMismatchError` naming every setting in ``identity`` that ``recorded`` differs on.

    A setting the study did not record (a study from an older aq-search) counts as different.
    """
    differing = [k for k in identity if _plain(recorded.get(k, _MISSING)) != _plain(identity[k])]
    if not differing:
        return
    details = "; ".join(f"{k}: recorded {_short(recorded.get(k, _MISSING))}, now {_short(identity[k])}" for k in differing)
    raise StudyMismatchError(
        f"study {study!r} in {storage} was run with different settings ({', '.join(differing)} differ: {details}). "
        "Resuming or joining it would mix results of different settings. Pass a new study_name (or results_dir), "
        "or run with the settings it recorded."
    )


def resumed_sampler_seed(seed: int | None, n_existing_trials: int) -> int | None:
    """The sampler seed for a run on a study that has ``n_existing_trials`` trials.

    ``seed`` itself for a new study (a fresh run is reproducible), ``seed + n_existing_trials`` for a
    resumed one, so a deterministic sampler does not propose the first run's configurations again.
    ``None`` (an unseeded sampler) stays ``None``.
    """
    if seed is None or n_existing_trials <= 0:
        return seed
    return (seed + n_existing_trials) % 2**32
