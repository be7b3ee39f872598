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

__all__ = ["Boolean", "Constraint", "Interval", "NoneValue", "Options", "check_parameter", "validate_params"]


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


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, (int, float, str, bool, type(None))) else f"a {type(value).__name__}"


def check_parameter(name: str, owner: str, value: Any, constraints: Sequence[Constraint]) -> Any:
    """``value`` converted by the first constraint it satisfies.

    Raises:
        InvalidInputError: "The '<name>' parameter of <owner> must be ... Got ... instead."
    """
    for c in constraints:
        if c.accepts(value):
            return c.convert(value)
    must = " or ".join(str(c) for c in constraints)
    raise InvalidInputError(f"The '{name}' parameter of {owner} must be {must}. Got {_shown(value)} instead.")


def validate_params(obj: Any, constraints: Mapping[str, Sequence[Constraint]] | None = None) -> None:
    """Check (and convert, on frozen dataclasses too) every declared parameter of ``obj``."""
    declared = type(obj)._parameter_constraints if constraints is None else constraints
    owner = type(obj).__name__
    for name, allowed in declared.items():
        value = check_parameter(name, owner, getattr(obj, name), allowed)
        if value is not getattr(obj, name):
            object.__setattr__(obj, name, value)
