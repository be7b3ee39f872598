"""Bit-width candidates for mixed precision: ``"w4a8"``, ``"fp16"``, ``"fp32"`` and AIMET's tuple form.

A candidate is the precision one quantizer group takes: the format of its layers' weights and the
format of the activations feeding them.

* ``"w<param bits>a<activation bits>"``: integer formats, 2..16 bits each (``"w4a8"``, ``"w8a16"``).
  Either side may be a float format instead: ``"w8afp16"``.
* ``"fp16"`` / ``"fp32"``: the layer stays in float (a float16 cast, or no change at all).
* AIMET's tuple ``((activation bits, dtype), (param bits, dtype))``. AIMET puts the **activation**
  first: its docs and tests annotate the candidate list with
  ``# ((activation bitwidth, activation data type), (param bitwidth, param data type))``, e.g.
  ``((16, QuantizationDataType.int), (8, QuantizationDataType.int))`` is W8A16. The dtype may be
  ``"int"``/``"float"``, the Python types ``int``/``float``, or AIMET's ``QuantizationDataType``
  members (anything whose ``name`` is ``"int"`` or ``"float"``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import InvalidInputError

__all__ = ["Candidate", "CandidateLike", "parse_candidate", "parse_candidates"]

_MIN_INT_BITS = 2
_MAX_INT_BITS = 16
_FLOAT_BITS = (16, 32)
_TOKEN = r"(\d+|fp16|fp32)"
_PATTERN = re.compile(rf"w{_TOKEN}a{_TOKEN}")
_EXPECTED = (
    "a string 'w<param bits>a<activation bits>' such as 'w4a8' (2..16 bits, or 'fp16'/'fp32' for a float side, "
    "e.g. 'w8afp16'), 'fp16' or 'fp32', or AIMET's tuple ((activation bits, dtype), (param bits, dtype)) "
    "such as ((8, 'int'), (4, 'int'))"
)


def _check_format(bits: int, dtype: str, what: str) -> None:
    if dtype == "float":
        if bits not in _FLOAT_BITS:
            raise InvalidInputError(f"A float {what} format must have 16 or 32 bits. Got {bits!r} instead.")
    elif dtype == "int":
        if isinstance(bits, bool) or not isinstance(bits, int) or not _MIN_INT_BITS <= bits <= _MAX_INT_BITS:
            raise InvalidInputError(
                f"An integer {what} bit-width must be an int in [{_MIN_INT_BITS}, {_MAX_INT_BITS}] "
                f"(use 'fp16'/'fp32' for float). Got {bits!r} instead."
            )
    else:
        raise InvalidInputError(f"A {what} dtype must be 'int' or 'float'. Got {dtype!r} instead.")


def _token(bits: int, dtype: str) -> str:
    return f"fp{bits}" if dtype == "float" else str(bits)


@dataclass(frozen=True)
class Candidate:
    """The precision of one quantizer group: its weights' format and its input activations' format.

    Args:
        param_bw / activation_bw: bit-widths; 2..16 for ``"int"``, 16 or 32 for ``"float"``.
        param_dtype / activation_dtype: ``"int"`` or ``"float"``.

    ``str(candidate)`` is the canonical name (``"w4a8"``, ``"fp16"``, ``"w8afp16"``).
    """

    param_bw: int
    activation_bw: int
    param_dtype: str = "int"
    activation_dtype: str = "int"

    def __post_init__(self) -> None:
        _check_format(self.param_bw, self.param_dtype, "param")
        _check_format(self.activation_bw, self.activation_dtype, "activation")

    @property
    def name(self) -> str:
        if self.param_dtype == self.activation_dtype == "float" and self.param_bw == self.activation_bw:
            return f"fp{self.param_bw}"
        return f"w{_token(self.param_bw, self.param_dtype)}a{_token(self.activation_bw, self.activation_dtype)}"

    @property
    def param_format(self) -> tuple[int, str]:
        return self.param_bw, self.param_dtype

    @property
    def activation_format(self) -> tuple[int, str]:
        return self.activation_bw, self.activation_dtype

    def to_aimet(self) -> tuple[tuple[int, str], tuple[int, str]]:
        """AIMET's order: ``((activation bits, dtype), (param bits, dtype))``."""
        return (self.activation_bw, self.activation_dtype), (self.param_bw, self.param_dtype)

    def __str__(self) -> str:
        return self.name


#: What :func:`parse_candidate` accepts.
CandidateLike = str | Candidate | tuple[tuple[int, Any], tuple[int, Any]]


def _dtype(value: Any) -> str | None:
    if value is int:
        return "int"
    if value is float:
        return "float"
    name = value if isinstance(value, str) else getattr(value, "name", None)
    if isinstance(name, str) and name.lower() in ("int", "float"):
        return name.lower()
    return None


def _from_string(text: str) -> Candidate:
    s = text.strip().lower()
    if s in ("fp16", "fp32"):
        bits = int(s[2:])
        return Candidate(bits, bits, "float", "float")
    m = _PATTERN.fullmatch(s)
    if m is None:
        raise InvalidInputError(f"The mixed-precision candidate {text!r} is malformed: a candidate must be {_EXPECTED}.")
    fmt = []
    for tok in m.groups():
        fmt.append((int(tok[2:]), "float") if tok.startswith("fp") else (int(tok), "int"))
    (p_bw, p_dt), (a_bw, a_dt) = fmt
    try:
        return Candidate(p_bw, a_bw, p_dt, a_dt)
    except InvalidInputError as err:
        raise InvalidInputError(f"The mixed-precision candidate {text!r} is invalid: {err}") from None


def _from_tuple(value: Sequence[Any]) -> Candidate:
    ok = len(value) == 2 and all(isinstance(v, (tuple, list)) and len(v) == 2 for v in value)
    if ok:
        (a_bw, a_dt), (p_bw, p_dt) = value
        a_dtype, p_dtype = _dtype(a_dt), _dtype(p_dt)
        ints = all(isinstance(b, int) and not isinstance(b, bool) for b in (a_bw, p_bw))
        if a_dtype is not None and p_dtype is not None and ints:
            try:
                return Candidate(p_bw, a_bw, p_dtype, a_dtype)
            except InvalidInputError as err:
                raise InvalidInputError(f"The mixed-precision candidate {value!r} is invalid: {err}") from None
    raise InvalidInputError(f"The mixed-precision candidate {value!r} is malformed: a candidate must be {_EXPECTED}.")


def parse_candidate(value: CandidateLike) -> Candidate:
    """Turn ``"w4a8"``, ``"fp16"``, ``((8, int), (4, int))`` or a :class:`Candidate` into a :class:`Candidate`.

    Raises:
        InvalidInputError: naming the value and the accepted forms.

    Example:
        >>> parse_candidate("W4A8").name
        'w4a8'
        >>> parse_candidate(((16, "int"), (8, "int"))).name  # AIMET order: activation first
        'w8a16'
    """
    if isinstance(value, Candidate):
        return value
    if isinstance(value, str):
        return _from_string(value)
    if isinstance(value, (tuple, list)):
        return _from_tuple(value)
    raise InvalidInputError(f"The mixed-precision candidate {value!r} is malformed: a candidate must be {_EXPECTED}.")


def parse_candidates(values: Any, who: str = "choose_mixed_precision") -> tuple[Candidate, ...]:
    """Parse a list of two or more distinct candidates (order kept).

    Raises:
        InvalidInputError: not a list, fewer than two candidates, a malformed one, or a duplicate.
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        shown = repr(values) if isinstance(values, (str, bytes)) else f"a {type(values).__name__}"
        raise InvalidInputError(
            f"The 'candidates' parameter of {who} must be a list of two or more candidates such as "
            f"['w8a8', 'w4a8']. Got {shown} instead."
        )
    parsed = tuple(parse_candidate(v) for v in values)
    seen: dict[Candidate, Any] = {}
    for raw, cand in zip(values, parsed):
        if cand in seen:
            raise InvalidInputError(
                f"The 'candidates' parameter of {who} lists {cand.name!r} twice ({seen[cand]!r} and {raw!r}); "
                "each candidate must appear once."
            )
        seen[cand] = raw
    if len(parsed) < 2:
        raise InvalidInputError(
            f"The 'candidates' parameter of {who} must list at least two candidates to choose from, such as "
            f"['w8a8', 'w4a8']. Got {[c.name for c in parsed]!r} instead."
        )
    return parsed
