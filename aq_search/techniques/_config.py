"""The base of technique configs: frozen dataclasses, validated, serialized by allowlist.

A config holds primitives only (bools, ints, floats, strings and tuples of them), so ``to_dict()``
output goes through YAML or JSON and comes back equal through ``from_dict()``. Unknown keys are
rejected with the key named; values are checked by the class's ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from .._constraints import Boolean, Constraint, Interval, NoneValue, check_parameter, parameter_error, validate_params
from .._errors import InvalidInputError

__all__ = ["TechniqueConfig", "bad_argument"]

_C = TypeVar("_C", bound="TechniqueConfig")


def bad_argument(param: str, who: str, must: str, value: object) -> InvalidInputError:
    """The project's wording for a bad argument of a function (see :func:`aq_search._constraints.parameter_error`)."""
    return parameter_error(param, who, must, value)


@dataclasses.dataclass(frozen=True)
class TechniqueConfig:
    """Base class of the technique configs (``BatchNormFoldConfig``, ``CLEConfig`` ...)."""

    #: Short id of the technique, as used in an ordering string such as ``"bnf>cle>adaround"``.
    technique: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain values (tuples become lists), for YAML/JSON."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls: type[_C], data: Mapping[str, Any], where: str = "") -> _C:
        """Build a config from :meth:`to_dict` output; unknown keys are an error naming them.

        Args:
            data: field values; missing fields take their defaults.
            where: where the dict comes from (a file name ...), named in error messages.
        """
        place = f" in {where}" if where else ""
        if not isinstance(data, Mapping):
            raise InvalidInputError(
                f"{cls.__name__}.from_dict needs a mapping of field values{place}. Got {type(data).__name__} instead."
            )
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in data if k not in allowed)
        if unknown:
            raise InvalidInputError(f"Unknown key(s) {unknown} for {cls.__name__}{place}; valid keys are {sorted(allowed)}.")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    #: Declared constraints per field (see :mod:`aq_search._constraints`); checked on construction.
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {}

    def __post_init__(self) -> None:
        validate_params(self)

    @classmethod
    def check_field(cls, name: str, value: Any) -> Any:
        """Check one value of field ``name`` against the class's declared constraints (YAML uses this)."""
        allowed = cls._parameter_constraints.get(name)
        return value if allowed is None else check_parameter(name, cls.__name__, value, allowed)

    # -- validation helpers for checks not (yet) declared: the same constraints, one message format --
    def _fail(self, name: str, must: str, value: object) -> InvalidInputError:
        return parameter_error(name, type(self).__name__, must, value)

    def _check(self, name: str, *constraints: Constraint) -> None:
        value = check_parameter(name, type(self).__name__, getattr(self, name), constraints)
        object.__setattr__(self, name, value)

    def _check_bool(self, name: str) -> None:
        self._check(name, Boolean())

    def _check_int(self, name: str, lo: int, hi: int | None = None, *, optional: bool = False) -> None:
        self._check(name, Interval(int, lo, hi), *((NoneValue(),) if optional else ()))

    def _check_float(
        self,
        name: str,
        lo: float,
        hi: float = math.inf,
        *,
        lo_open: bool = False,
        hi_open: bool = False,
    ) -> None:
        """Accept ints too and store the value as a float."""
        closed = {(False, False): "both", (False, True): "left", (True, False): "right", (True, True): "neither"}[
            (lo_open, hi_open)
        ]
        self._check(name, Interval(float, lo, None if hi == math.inf else hi, closed))
