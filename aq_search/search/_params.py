"""The values of a search space: a choice, an integer or a float range; parsed with the file and key named.

Technique sections are built from these: a registered technique's dimensions become a :class:`Section`
(``{dimension: spec}``, also readable as attributes), checked against the dimension's declaration and
its config's declared constraints (one validation path for Python arguments and YAML).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from .._constraints import check_raw_values
from .._errors import InvalidInputError, SearchSpaceError

__all__ = ["Choice", "FloatRange", "IntRange", "ParamSpec", "Section", "suggest_param"]


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


class Section(Mapping[str, ParamSpec]):
    """A technique's section of a space: ``{dimension: spec}``, immutable, also read as ``section.name``."""

    def __init__(self, specs: Mapping[str, ParamSpec]) -> None:
        self._specs = dict(specs)

    def __getitem__(self, key: str) -> ParamSpec:
        return self._specs[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __getattr__(self, name: str) -> ParamSpec:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._specs[name]
        except KeyError:
            raise AttributeError(f"this section has no dimension {name!r}; it has {', '.join(self._specs)}") from None

    def __repr__(self) -> str:
        return f"Section({self._specs!r})"

    def to_yaml(self) -> dict[str, Any]:
        return {k: v.to_yaml() for k, v in self._specs.items()}


def suggest_param(trial: optuna.trial.BaseTrial, name: str, spec: ParamSpec) -> Any:
    """The trial's value of parameter ``name`` (a fixed value is returned as it is, not suggested)."""
    if isinstance(spec, IntRange):
        return trial.suggest_int(name, spec.low, spec.high, step=spec.step, log=spec.log)
    if isinstance(spec, FloatRange):
        return trial.suggest_float(name, spec.low, spec.high, log=spec.log)
    if len(spec.values) == 1:
        return spec.values[0]
    return trial.suggest_categorical(name, list(spec.values))


# -- parsing --------------------------------------------------------------------------------------


class Where:
    """Where a value comes from: its errors name the file and the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, message: str) -> SearchSpaceError:
        return SearchSpaceError(f"search space {self.source}: key '{key}': {message}")


def mapping(value: Any, key: str, where: Where, allowed: set[str]) -> Mapping[str, Any]:
    """``value`` as a mapping with only ``allowed`` keys (``None``: empty)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise where.error(key, f"must be a mapping. Got {type(value).__name__} instead.")
    unknown = set(value) - allowed
    if unknown:
        bad = sorted(map(str, unknown))[0]
        raise where.error(f"{key}.{bad}" if key else bad, f"unknown key; valid keys here: {', '.join(sorted(allowed))}.")
    return value


def param(value: Any, key: str, where: Where, kind: type, lo: float, hi: float) -> ParamSpec:
    """A numeric parameter: a value, a list of values or a ``low``/``high`` range, within ``[lo, hi]``."""

    def check(v: Any) -> Any:
        if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise where.error(key, f"must be an integer. Got {v!r} instead.")
        if kind is float and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise where.error(key, f"must be a number. Got {v!r} instead.")
        if not lo <= v <= hi:
            raise where.error(key, f"must be in [{lo}, {hi}]. Got {v!r} instead.")
        return kind(v)

    if isinstance(value, Mapping):
        mapping(value, key, where, {"low", "high", "log", "step"})
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


def bool_choice(value: Any, key: str, where: Where) -> Choice:
    """``true``, ``false`` or a list of them."""
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or not all(isinstance(v, bool) for v in values):
        raise where.error(key, f"must be true, false or a list of them. Got {value!r} instead.")
    return Choice(tuple(values))


def check_config_field(spec: ParamSpec, key: str, where: Where, config_class: Any, name: str) -> None:
    """Every value a dimension can take must pass the config's declared constraint (one validation path)."""
    if config_class is None or not hasattr(config_class, "check_field"):
        return
    values = spec.values if isinstance(spec, Choice) else (spec.low, spec.high)
    for v in values:
        try:
            config_class.check_field(name, v)
        except InvalidInputError as err:
            raise where.error(key, str(err)) from None


def dimension(value: Any, key: str, where: Where, dim: Any, config_class: Any = None) -> ParamSpec:
    """A technique's dimension, checked against its declaration (kind, range) and its config's constraints."""
    spec: ParamSpec
    if dim.kind is bool:
        spec = bool_choice(value, key, where)
    elif dim.kind is str:  # a choice of names: the config's constraint says which
        values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        if not values:
            raise where.error(key, "a list of choices must not be empty.")
        spec = Choice(values)
    else:
        low = -math.inf if dim.low is None else dim.low
        high = math.inf if dim.high is None else dim.high
        spec = param(value, key, where, dim.kind, low, high)
    check_config_field(spec, key, where, config_class, dim.name)
    return spec


def parse_section(spec: Any, raw: Any, where: Where) -> Any:
    """A registered technique's section: its own parser, or one :func:`dimension` per declared dimension.

    Values the technique's config declares constraints for are checked against that declaration first,
    so a YAML key and the matching Python argument fail with the same message.
    """
    if isinstance(raw, Mapping) and hasattr(spec.config_class, "_parameter_constraints"):
        check_raw_values(spec.config_class, raw, lambda name, msg: where.error(f"{spec.space_key}.{name}", msg))
    if spec.parse_section is not None:
        return spec.parse_section(raw, where)
    values = mapping(raw, spec.space_key, where, {d.name for d in spec.dimensions})
    return Section(
        {
            d.name: dimension(values.get(d.name, d.default), f"{spec.space_key}.{d.name}", where, d, spec.config_class)
            for d in spec.dimensions
        }
    )


def section_to_yaml(spec: Any, section: Any) -> Any:
    """The plain data of a technique's section (the inverse of :func:`parse_section`)."""
    if spec.section_to_yaml is not None:
        return spec.section_to_yaml(section)
    return {k: v.to_yaml() for k, v in section.items()}
