"""Search spaces: YAML files validated into frozen dataclasses.

A space says which technique orderings the search may try and the range of every tuned setting.
See ``search_spaces/README.md`` for every key. Values take one of three forms:

* a list: a categorical choice (``[tf, tf_enhanced]``),
* a mapping with ``low`` and ``high`` (and optional ``log: true`` / ``step``): a numeric range,
* a plain value: fixed, not searched.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .._errors import InvalidInputError, SearchSpaceError
from ..quantsim._range import _parse_scheme
from ._ordering import STAGES, validate_ordering

__all__ = [
    "AIMET_SCHEME_CANDIDATES",
    "STAGES",
    "AdaRoundSpace",
    "AmpSpace",
    "BiasCorrectionSpace",
    "CLESpace",
    "Choice",
    "FloatRange",
    "IntRange",
    "ParamSpec",
    "PrunerSpec",
    "SchemeSpace",
    "SearchSpace",
    "builtin_spaces",
    "load_search_space",
    "validate_ordering",
]


#: How ``scheme: select`` ranks its pairs: the eval callback (AIMET) or output SQNR (no eval call).
SELECT_BY = ("eval", "sqnr")

#: AIMET AutoQuant's scheme candidates (weights / activations), tried by ``scheme: select``.
AIMET_SCHEME_CANDIDATES: tuple[str, ...] = (
    "tf/tf",
    "tf_enhanced/tf",
    "tf_enhanced/tf_enhanced",
    "tf_enhanced/percentile:99.9",
    "tf_enhanced/percentile:99.99",
)


@dataclass(frozen=True)
class Choice:
    """A categorical parameter (one value = fixed)."""

    values: tuple[Any, ...]

    def to_yaml(self) -> Any:
        return self.values[0] if len(self.values) == 1 else list(self.values)


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    log: bool = False
    step: int = 1

    def to_yaml(self) -> Any:
        return {"low": self.low, "high": self.high, "log": self.log, "step": self.step}


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False

    def to_yaml(self) -> Any:
        return {"low": self.low, "high": self.high, "log": self.log}


ParamSpec = Choice | IntRange | FloatRange


@dataclass(frozen=True)
class SchemeSpace:
    """``scheme`` stage: which range settings a trial may use.

    ``candidates`` are ``"<param scheme>/<activation scheme>"`` pairs (a percentile as
    ``percentile:99.9``), plus ``select`` = evaluate every pair in ``select_candidates`` at that
    point of the pipeline and keep the best (AIMET's scheme selection). ``select_by`` is how
    ``select`` ranks the pairs: ``eval`` (the eval callback, one call per pair, as AIMET) or ``sqnr``
    (the model output's signal-to-quantization-noise ratio against FP32 on calibration batches: no
    eval call).
    """

    candidates: Choice
    select_candidates: tuple[str, ...]
    per_channel: Choice
    select_by: str = "eval"


@dataclass(frozen=True)
class CLESpace:
    high_bias_absorption: Choice
    replace_relu6: Choice = Choice(("always",))


@dataclass(frozen=True)
class BiasCorrectionSpace:
    num_batches: ParamSpec


@dataclass(frozen=True)
class AdaRoundSpace:
    num_batches: ParamSpec
    num_iterations: ParamSpec
    reg_param: ParamSpec
    beta_high: ParamSpec
    beta_low: ParamSpec
    warm_start: ParamSpec


@dataclass(frozen=True)
class AmpSpace:
    """``candidate_sets``: each a list of candidates; ``w{param_bw}a{output_bw}`` is the study's own setting."""

    candidate_sets: tuple[tuple[str, ...], ...]
    num_samples_for_phase_1: ParamSpec


@dataclass(frozen=True)
class PrunerSpec:
    type: str = "median"
    n_startup_trials: int = 3
    n_warmup_steps: int = 1
    percentile: float = 25.0


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space (see ``search_spaces/README.md``)."""

    name: str
    orderings: tuple[str, ...]
    scheme: SchemeSpace
    cle: CLESpace
    bias_correction: BiasCorrectionSpace
    adaround: AdaRoundSpace
    amp: AmpSpace
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    sampler: str = "tpe"
    max_trials: int = 30
    n_startup_trials: int = 4
    intermediate_num_samples: int | None = None
    replay_reference: bool | str = True  # True, False or "aimet" (AIMET's own flow, see _aimet_flow.py)
    max_relative_bops: float = 1.5
    description: str = ""
    source: str = "<dict>"
    #: deployment target (``generic``, ``onnxruntime``, ``tensorrt``, ``qnn``; see ``aq_search.targets``)
    target: str | None = None
    #: the sections of generic registered techniques (``{space_key: {dimension: spec}}``)
    techniques: Mapping[str, Mapping[str, ParamSpec]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The space as the plain data it was loaded from (round-trips through :func:`load_search_space`)."""

        def param(p: ParamSpec) -> Any:
            return p.to_yaml()

        extra: dict[str, Any] = {} if self.target is None else {"target": self.target}  # absent: old fingerprints unchanged
        extra.update({k: {d: param(v) for d, v in dims.items()} for k, dims in self.techniques.items()})
        return {
            **extra,
            "name": self.name,
            "orderings": list(self.orderings),
            "scheme": {
                "candidates": param(self.scheme.candidates),
                "select_candidates": list(self.scheme.select_candidates),
                "select_by": self.scheme.select_by,
                "per_channel": param(self.scheme.per_channel),
            },
            "cle": {
                "high_bias_absorption": param(self.cle.high_bias_absorption),
                "replace_relu6": param(self.cle.replace_relu6),
            },
            "bias_correction": {"num_batches": param(self.bias_correction.num_batches)},
            "adaround": {k: param(getattr(self.adaround, k)) for k in _ADAROUND_KEYS},
            "amp": {
                "candidate_sets": [list(s) for s in self.amp.candidate_sets],
                "num_samples_for_phase_1": param(self.amp.num_samples_for_phase_1),
            },
            "pruner": asdict(self.pruner),
            "sampler": self.sampler,
            "max_trials": self.max_trials,
            "n_startup_trials": self.n_startup_trials,
            "intermediate_num_samples": self.intermediate_num_samples,
            "replay_reference": self.replay_reference,
            "max_relative_bops": self.max_relative_bops,
            "description": self.description,
        }

    def fingerprint(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_ADAROUND_KEYS = ("num_batches", "num_iterations", "reg_param", "beta_high", "beta_low", "warm_start")
_TOP_KEYS = {
    "name",
    "description",
    "orderings",
    "scheme",
    "cle",
    "bias_correction",
    "adaround",
    "amp",
    "pruner",
    "sampler",
    "max_trials",
    "n_startup_trials",
    "intermediate_num_samples",
    "replay_reference",
    "max_relative_bops",
    "target",
}


# -- parsing --------------------------------------------------------------------------------------


class _Where:
    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, message: str) -> SearchSpaceError:
        return SearchSpaceError(f"search space {self.source}: key '{key}': {message}")


def _mapping(value: Any, key: str, where: _Where, allowed: set[str]) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise where.error(key, f"must be a mapping. Got {type(value).__name__} instead.")
    unknown = set(value) - allowed
    if unknown:
        bad = sorted(map(str, unknown))[0]
        raise where.error(f"{key}.{bad}" if key else bad, f"unknown key; valid keys here: {', '.join(sorted(allowed))}.")
    return value


def _param(value: Any, key: str, where: _Where, kind: type, lo: float, hi: float) -> ParamSpec:
    def check(v: Any) -> Any:
        if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise where.error(key, f"must be an integer. Got {v!r} instead.")
        if kind is float and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise where.error(key, f"must be a number. Got {v!r} instead.")
        if not lo <= v <= hi:
            raise where.error(key, f"must be in [{lo}, {hi}]. Got {v!r} instead.")
        return kind(v)

    if isinstance(value, Mapping):
        _mapping(value, key, where, {"low", "high", "log", "step"})
        if "low" not in value or "high" not in value:
            raise where.error(key, "a range needs both 'low' and 'high'.")
        low, high = check(value["low"]), check(value["high"])
        if low > high:
            raise where.error(key, f"low ({low}) must not exceed high ({high}).")
        log = bool(value.get("log", False))
        if log and low <= 0:
            raise where.error(key, "a log range needs low > 0.")
        if kind is int:
            step = value.get("step", 1)
            if not isinstance(step, int) or step < 1 or (log and step != 1):
                raise where.error(key, "step must be a positive integer (and 1 for a log range).")
            return IntRange(int(low), int(high), log, step)
        if "step" in value:
            raise where.error(key, "step is only for integer ranges.")
        return FloatRange(float(low), float(high), log)
    if isinstance(value, (list, tuple)):
        if not value:
            raise where.error(key, "a list of choices must not be empty.")
        return Choice(tuple(check(v) for v in value))
    return Choice((check(value),))


def _dimension(value: Any, key: str, where: _Where, dim: Any, config_class: Any = None) -> ParamSpec:
    """A technique's dimension, checked against its declaration (kind, range) and its config's constraints."""
    spec = (
        _bool_choice(value, key, where)
        if dim.kind is bool
        else _param(
            value, key, where, dim.kind, -math.inf if dim.low is None else dim.low, math.inf if dim.high is None else dim.high
        )
    )
    _check_config_field(spec, key, where, config_class, dim.name)
    return spec


def _check_config_field(spec: ParamSpec, key: str, where: _Where, config_class: Any, name: str) -> None:
    """Every value a dimension can take must pass the config's declared constraint (one validation path)."""
    if config_class is None:
        return
    values = spec.values if isinstance(spec, Choice) else (spec.low, spec.high)
    for v in values:
        try:
            config_class.check_field(name, v)
        except InvalidInputError as err:
            raise where.error(key, str(err)) from None


def _config_class(key: str) -> Any:
    from ..techniques._registry import registered_techniques

    return registered_techniques()[key].config_class


def _bool_choice(value: Any, key: str, where: _Where) -> Choice:
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or not all(isinstance(v, bool) for v in values):
        raise where.error(key, f"must be true, false or a list of them. Got {value!r} instead.")
    return Choice(tuple(values))


def _scheme_pair(text: Any, key: str, where: _Where) -> str:
    if not isinstance(text, str):
        raise where.error(key, f"a scheme candidate must be a string like 'tf_enhanced/tf'. Got {text!r} instead.")
    if text == "select":
        return text
    parts = text.split("/")
    if len(parts) != 2:
        raise where.error(
            key, f"{text!r}: a scheme candidate is '<param scheme>/<activation scheme>', e.g. 'tf_enhanced/percentile:99.9'."
        )
    for part in parts:
        try:
            _parse_scheme(part)
        except Exception as err:  # noqa: BLE001 - re-raised with the file and key
            raise where.error(key, f"{text!r}: {err}") from None
    return text


def _candidate(text: Any, key: str, where: _Where) -> str:
    if not isinstance(text, str):
        raise where.error(
            key, f"an AMP candidate must be a string like 'w8a8' or 'w{{param_bw}}a{{output_bw}}'. Got {text!r} instead."
        )
    probe = text.replace("{param_bw}", "8").replace("{output_bw}", "8")
    import re

    if not (re.fullmatch(r"w(\d+)a(\d+)", probe) or probe in ("fp16", "fp32")):
        raise where.error(key, f"{text!r} is not a candidate: use 'w<param bits>a<activation bits>' (e.g. w8a16), fp16 or fp32.")
    return text


def _parse(data: Any, source: str) -> SearchSpace:
    where = _Where(source)
    from ..techniques._registry import registered_techniques

    generic = {spec.space_key: spec for spec in registered_techniques().values() if spec.generic}
    top = _mapping(data, "", where, _TOP_KEYS | set(generic))
    orderings_raw = top.get("orderings")
    if not isinstance(orderings_raw, (list, tuple)) or not orderings_raw:
        raise where.error("orderings", "must be a non-empty list of orderings like 'bnf>cle>adaround'.")
    orderings: list[str] = []
    for i, o in enumerate(orderings_raw):
        try:
            stages = validate_ordering(o)
        except SearchSpaceError as err:
            raise where.error(f"orderings[{i}]", str(err)) from None
        orderings.append(">".join(stages))

    sch = _mapping(top.get("scheme"), "scheme", where, {"candidates", "select_candidates", "select_by", "per_channel"})
    cands = sch.get("candidates", ["select"])
    cands = cands if isinstance(cands, (list, tuple)) else [cands]
    if not cands:
        raise where.error("scheme.candidates", "must not be empty.")
    scheme = SchemeSpace(
        candidates=Choice(tuple(_scheme_pair(c, "scheme.candidates", where) for c in cands)),
        select_candidates=tuple(
            _scheme_pair(c, "scheme.select_candidates", where) for c in sch.get("select_candidates", AIMET_SCHEME_CANDIDATES)
        ),
        per_channel=_bool_choice(sch.get("per_channel", True), "scheme.per_channel", where),
        select_by=sch.get("select_by", "eval"),
    )
    if scheme.select_by not in SELECT_BY:
        raise where.error("scheme.select_by", f"must be one of {', '.join(SELECT_BY)}. Got {scheme.select_by!r} instead.")
    if "select" in scheme.select_candidates:
        raise where.error("scheme.select_candidates", "'select' cannot be one of the pairs it selects from.")

    cle_raw = _mapping(top.get("cle"), "cle", where, {"high_bias_absorption", "replace_relu6"})
    relu6 = cle_raw.get("replace_relu6", "always")
    relu6_values = tuple(relu6) if isinstance(relu6, (list, tuple)) else (relu6,)
    if not relu6_values:
        raise where.error("cle.replace_relu6", "a list of choices must not be empty.")
    _check_config_field(Choice(relu6_values), "cle.replace_relu6", where, _config_class("cle"), "replace_relu6")
    cle = CLESpace(
        _bool_choice(cle_raw.get("high_bias_absorption", True), "cle.high_bias_absorption", where),
        Choice(relu6_values),
    )
    bc_raw = _mapping(top.get("bias_correction"), "bias_correction", where, {"num_batches"})
    bc_batches = _param(bc_raw.get("num_batches", 4), "bias_correction.num_batches", where, int, 1, 100_000)
    _check_config_field(bc_batches, "bias_correction.num_batches", where, _config_class("bc"), "num_batches")
    bc = BiasCorrectionSpace(bc_batches)

    ada_raw = _mapping(top.get("adaround"), "adaround", where, set(_ADAROUND_KEYS))
    ada = AdaRoundSpace(
        num_batches=_param(ada_raw.get("num_batches", 4), "adaround.num_batches", where, int, 1, 100_000),
        num_iterations=_param(ada_raw.get("num_iterations", 1000), "adaround.num_iterations", where, int, 1, 1_000_000),
        reg_param=_param(ada_raw.get("reg_param", 0.01), "adaround.reg_param", where, float, 1e-8, 100.0),
        beta_high=_param(ada_raw.get("beta_high", 20.0), "adaround.beta_high", where, float, 1.0, 1000.0),
        beta_low=_param(ada_raw.get("beta_low", 2.0), "adaround.beta_low", where, float, 0.01, 1000.0),
        warm_start=_param(ada_raw.get("warm_start", 0.2), "adaround.warm_start", where, float, 0.0, 0.99),
    )

    amp_raw = _mapping(top.get("amp"), "amp", where, {"candidate_sets", "num_samples_for_phase_1"})
    sets_raw = amp_raw.get("candidate_sets", [["w{param_bw}a{output_bw}", "w8a8"]])
    if not isinstance(sets_raw, (list, tuple)) or not sets_raw:
        raise where.error("amp.candidate_sets", "must be a non-empty list of candidate lists.")
    sets: list[tuple[str, ...]] = []
    for i, s in enumerate(sets_raw):
        if not isinstance(s, (list, tuple)) or len(s) < 2:
            raise where.error(f"amp.candidate_sets[{i}]", f"needs at least two candidates. Got {s!r} instead.")
        sets.append(tuple(_candidate(c, f"amp.candidate_sets[{i}]", where) for c in s))
    amp = AmpSpace(
        candidate_sets=tuple(sets),
        num_samples_for_phase_1=_param(
            amp_raw.get("num_samples_for_phase_1", 128), "amp.num_samples_for_phase_1", where, int, 1, 10_000_000
        ),
    )

    pr = _mapping(top.get("pruner"), "pruner", where, {"type", "n_startup_trials", "n_warmup_steps", "percentile"})
    ptype = pr.get("type", "median")
    if ptype not in ("none", "median", "percentile"):
        raise where.error("pruner.type", f"must be none, median or percentile. Got {ptype!r} instead.")
    pruner = PrunerSpec(
        type=ptype,
        n_startup_trials=int(_param(pr.get("n_startup_trials", 3), "pruner.n_startup_trials", where, int, 0, 10_000).to_yaml()),
        n_warmup_steps=int(_param(pr.get("n_warmup_steps", 1), "pruner.n_warmup_steps", where, int, 0, 100).to_yaml()),
        percentile=float(_param(pr.get("percentile", 25.0), "pruner.percentile", where, float, 0.0, 100.0).to_yaml()),
    )
    sampler = top.get("sampler", "tpe")
    if sampler not in ("tpe", "random"):
        raise where.error("sampler", f"must be tpe or random. Got {sampler!r} instead.")

    def positive_int(key: str, default: int | None, allow_none: bool = False) -> int | None:
        v = top.get(key, default)
        if v is None and allow_none:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if key == "n_startup_trials" else 1):
            raise where.error(key, f"must be a positive integer{' or null' if allow_none else ''}. Got {v!r} instead.")
        return v

    replay = top.get("replay_reference", True)
    if not isinstance(replay, bool) and replay != "aimet":
        raise where.error("replay_reference", f"must be true, false or 'aimet'. Got {replay!r} instead.")
    max_bops = top.get("max_relative_bops", 1.5)
    if isinstance(max_bops, bool) or not isinstance(max_bops, (int, float)) or not max_bops >= 1.0 or max_bops == float("inf"):
        raise where.error("max_relative_bops", f"must be a number >= 1. Got {max_bops!r} instead.")
    target = top.get("target")
    if target is not None:
        from ..targets import TARGETS

        if not isinstance(target, str) or target not in TARGETS:
            raise where.error("target", f"must be one of {', '.join(TARGETS)}. Got {target!r} instead.")
    used = {k for o in orderings for k in o.split(">")}
    sections: dict[str, dict[str, ParamSpec]] = {}
    for space_key, spec in generic.items():
        if space_key in top or spec.key in used:
            raw = _mapping(top.get(space_key), space_key, where, {d.name for d in spec.dimensions})
            sections[space_key] = {
                d.name: _dimension(raw.get(d.name, d.default), f"{space_key}.{d.name}", where, d, spec.config_class)
                for d in spec.dimensions
            }
    name = top.get("name", Path(source).stem if source != "<dict>" else "custom")
    if not isinstance(name, str):
        raise where.error("name", "must be a string.")
    space = SearchSpace(
        name=name,
        orderings=tuple(orderings),
        scheme=scheme,
        cle=cle,
        bias_correction=bc,
        adaround=ada,
        amp=amp,
        pruner=pruner,
        sampler=sampler,
        max_trials=positive_int("max_trials", 30) or 30,
        n_startup_trials=positive_int("n_startup_trials", 4) or 0,
        intermediate_num_samples=positive_int("intermediate_num_samples", None, allow_none=True),
        replay_reference=replay,
        max_relative_bops=float(max_bops),
        description=str(top.get("description", "")),
        source=source,
        target=target,
        techniques=sections,
    )
    return space


def _builtin_dir() -> Path:
    return Path(str(resources.files("aq_search") / "search_spaces"))


def builtin_spaces() -> dict[str, Path]:
    """Built-in spaces by name (``default``, ``fast``, ``thorough`` ...)."""
    d = _builtin_dir()
    return {p.stem: p for p in sorted(d.glob("*.yaml"))}


def load_search_space(space: str | os.PathLike[str] | Mapping[str, Any] | SearchSpace) -> SearchSpace:
    """Load a built-in space by name, a YAML file by path, or validate a dict.

    Raises:
        SearchSpaceError: unknown name or missing file, invalid YAML, an unknown key or a bad
            value (the message names the file and the key).
    """
    if isinstance(space, SearchSpace):
        return space
    if isinstance(space, Mapping):
        return _parse(space, "<dict>")
    if not isinstance(space, (str, os.PathLike)):
        raise SearchSpaceError(f"search_space must be a name, a path or a dict. Got {type(space).__name__} instead.")
    text = os.fspath(space)
    builtins = builtin_spaces()
    if text in builtins:
        path = builtins[text]
    else:
        path = Path(text)
        if not path.exists():
            raise SearchSpaceError(
                f"search space {text!r} is neither a built-in name ({', '.join(builtins)}) nor an existing file."
            )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SearchSpaceError(f"search space {path}: invalid YAML: {err}") from None
    return _parse(data, str(path))
