"""Parameter constraints declared as data (scikit-learn's ``_parameter_constraints``), one message format.

A class declares, per parameter, the constraints any of which a value may satisfy::

    _parameter_constraints = {"num_batches": [Interval(int, 1, None)], "mode": [Options("a", "b")]}

:func:`validate_params` checks an object against its class's declaration; :func:`check_parameter`
checks one value (technique configs, ``AutoQuant`` arguments and search-space YAML values all go
through it). A failure reads "The 'x' parameter of Y must be <constraint> [or <constraint>]. Got <v>
instead."
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._errors import InvalidInputError

__all__ = [
    "Boolean",
    "Constraint",
    "Interval",
    "NoneValue",
    "Options",
    "Pair",
    "check_parameter",
    "parameter_error",
    "check_raw_values",
    "validate_params",
]


class Constraint:
    """One acceptable kind of value; ``str(c)`` completes "must be ..."."""

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def convert(self, value: Any) -> Any:
        """The value as stored (e.g. an int accepted by a float interval becomes a float)."""
        return value


@dataclass(frozen=True)
class Interval(Constraint):
    """A number of ``kind`` (``int`` or ``float``) in ``[low, high]``; ``None`` bounds are open-ended.

    ``closed`` is ``"both"``, ``"left"``, ``"right"`` or ``"neither"``. A float interval accepts ints
    too (stored as floats) and never NaN or infinity.
    """

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool):
            return False
        if self.kind is int:
            if not isinstance(value, int):
                return False
        elif not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        if self.low is not None and not (value >= self.low if left else value > self.low):
            return False
        return self.high is None or (value <= self.high if right else value < self.high)

    def convert(self, value: Any) -> Any:
        return float(value) if self.kind is float else value

    def __str__(self) -> str:
        if self.kind is int:
            if self.high is None:
                return f"an int >= {self.low}" if self.closed in ("both", "left") else f"an int > {self.low}"
            return f"an int in [{self.low}, {self.high}]"
        low = -math.inf if self.low is None else float(self.low)
        high = math.inf if self.high is None else float(self.high)
        left = "[" if self.closed in ("both", "left") and self.low is not None else "("
        right = "]" if self.closed in ("both", "right") and self.high is not None else ")"
        return f"a finite number in {left}{low}, {high}{right}"


@dataclass(frozen=True)
class Options(Constraint):
    """One of the given values (compared with ``==``, bools never equal to numbers)."""

    values: tuple[Any, ...]

    def __init__(self, *values: Any) -> None:
        object.__setattr__(self, "values", tuple(values))

    def accepts(self, value: Any) -> bool:
        return any(type(value) is type(v) and value == v for v in self.values)

    def __str__(self) -> str:
        return f"one of {list(self.values)}"


@dataclass(frozen=True)
class Boolean(Constraint):
    """``True`` or ``False`` (not 0/1)."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def __str__(self) -> str:
        return "a bool"


@dataclass(frozen=True)
class NoneValue(Constraint):
    """``None``."""

    def accepts(self, value: Any) -> bool:
        return value is None

    def __str__(self) -> str:
        return "None"


@dataclass(frozen=True)
class Pair(Constraint):
    """``(start, end)``: two values each satisfying ``item`` (a list is accepted, stored as a tuple).

    ``order`` is ``"descending"`` (start >= end), ``"ascending"`` (start <= end) or ``None``;
    ``items`` names the values in the message (default: ``item``'s own wording); ``example`` is
    shown in the message.
    """

    item: Constraint
    order: str | None = None
    example: str = ""
    items: str = ""

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(self.item.accepts(v) for v in value):
            return False
        start, end = value
        if self.order == "descending":
            return bool(start >= end)
        return self.order is None or bool(start <= end)

    def convert(self, value: Any) -> Any:
        return tuple(self.item.convert(v) for v in value)

    def __str__(self) -> str:
        what = f"of {self.items}" if self.items else f"each {self.item}"
        order = {"descending": " with start >= end", "ascending": " with start <= end"}.get(self.order or "", "")
        example = f", such as {self.example}" if self.example else ""
        return f"a pair (start, end) {what}{order}{example}"


def _shown(value: Any) -> str:
    primitive = (int, float, str, bool, type(None))
    if isinstance(value, primitive):
        return repr(value)
    if isinstance(value, (tuple, list)) and len(value) <= 8 and all(isinstance(v, primitive) for v in value):
        return repr(value)
    return f"a {type(value).__name__}"


def check_parameter(name: str, owner: str, value: Any, constraints: Sequence[Constraint]) -> Any:
    """``value`` converted by the first constraint it satisfies.

    Raises:
        InvalidInputError: "The '<name>' parameter of <owner> must be ... Got ... instead."
    """
    for c in constraints:
        if c.accepts(value):
            return c.convert(value)
    raise parameter_error(name, owner, " or ".join(str(c) for c in constraints), value)


def parameter_error(name: str, owner: str, must: str, value: Any) -> InvalidInputError:
    """The one wording of a bad argument: "The '<name>' parameter of <owner> must be <must>. Got <value> instead."

    Args:
        name: the parameter.
        owner: the function or class it belongs to.
        must: completes "must be ..." (e.g. ``"a QuantSim"``, ``"an int >= 1"``).
        value: what was passed; shown as its repr when short and primitive, else as its type.
    """
    return InvalidInputError(f"The '{name}' parameter of {owner} must be {must}. Got {_shown(value)} instead.")


def validate_params(obj: Any, constraints: Mapping[str, Sequence[Constraint]] | None = None) -> None:
    """Check (and convert, on frozen dataclasses too) every declared parameter of ``obj``."""
    declared = type(obj)._parameter_constraints if constraints is None else constraints
    owner = type(obj).__name__
    for name, allowed in declared.items():
        value = check_parameter(name, owner, getattr(obj, name), allowed)
        if value is not getattr(obj, name):
            object.__setattr__(obj, name, value)


def check_raw_values(owner: type, raw: Mapping[str, Any], report: Any) -> None:
    """Check the values of a YAML section against ``owner``'s declared constraints, in ``owner``'s words.

    A value may be a scalar, a list of choices, or a range mapping (``low`` / ``high``); each one is
    checked. Names ``owner`` does not declare are left to the caller.

    Args:
        owner: a class with ``_parameter_constraints`` (a technique config).
        raw: the section's ``{name: value}``.
        report: ``report(name, message) -> Exception`` wraps a failure (e.g. naming the file and key).
    """
    declared: Mapping[str, Sequence[Constraint]] = owner._parameter_constraints  # type: ignore[attr-defined]
    for name, value in raw.items():
        allowed = declared.get(name)
        if allowed is None:
            continue
        if isinstance(value, Mapping):
            values = [value[k] for k in ("low", "high") if k in value]
        elif isinstance(value, list) and not any(isinstance(c, Pair) for c in allowed):
            values = list(value)
        else:
            values = [value]
        for v in values:
            try:
                check_parameter(name, owner.__name__, v, allowed)
            except InvalidInputError as err:
                raise report(name, str(err)) from None
