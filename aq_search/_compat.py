"""Renamed parameters: the old keyword keeps working for one release, with a ``DeprecationWarning``.

``forward_fn`` means ``forward_fn(model, batch)`` everywhere (AutoQuant, AdaRound, bias correction,
activation range search, as AIMET's ``AdaroundParameters.forward_fn``). The callback that runs the
whole calibration loop itself, ``callback(model)``, is ``forward_pass_callback`` (AIMET's name in
``compute_encodings`` and ``choose_mixed_precision``); it was called ``forward_fn`` there before.
"""

from __future__ import annotations

import warnings
from typing import Any

from ._errors import InvalidInputError

__all__ = ["UNSET", "renamed_parameter"]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: Default of a deprecated keyword: tells "not passed" apart from any value, ``None`` included.
UNSET: Any = _Unset()


def renamed_parameter(who: str, old: str, new: str, old_value: Any, new_value: Any, default: Any = None) -> Any:
    """The value to use for ``new``, taking a value passed under the deprecated name ``old``.

    Args:
        who: the function, named in the messages.
        old / new: the deprecated and the current parameter name.
        old_value: what was passed as ``old`` (:data:`UNSET` when nothing was).
        new_value: what was passed as ``new``.
        default: ``new``'s default, to tell whether it was passed too.

    Raises:
        InvalidInputError: both names were passed.
    """
    if old_value is UNSET:
        return new_value
    warnings.warn(
        f"The '{old}' parameter of {who} is renamed '{new}' ('{old}' will be removed in the next release): "
        f"pass {new}= instead.",
        DeprecationWarning,
        stacklevel=3,
    )
    if new_value is not default:
        raise InvalidInputError(f"{who} got both '{new}' and its deprecated name '{old}'. Pass only {new}=.")
    return old_value
