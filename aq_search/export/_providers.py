"""onnxruntime execution providers for validation: explicit, or every one this build offers."""

from __future__ import annotations

from collections.abc import Sequence

from .._errors import InvalidInputError

__all__ = ["resolve_providers"]

_CPU = "CPUExecutionProvider"
# providers that need a remote service or credentials, never picked by "available"
_REMOTE = ("AzureExecutionProvider",)


def resolve_providers(providers: Sequence[str] | str | None, available: Sequence[str]) -> tuple[str, ...]:
    """The providers to create a session with, in priority order.

    ``None``: CPU only. ``"available"``: every provider of this onnxruntime build (remote ones such as
    Azure left out), the CPU provider last as the fallback. A list: checked against ``available``.
    """
    if providers is None:
        return (_CPU,)
    if isinstance(providers, str):
        if providers != "available":
            raise InvalidInputError(
                f"The 'providers' parameter must be a list of onnxruntime execution providers or 'available'. "
                f"Got {providers!r} instead."
            )
        local = [p for p in available if p not in _REMOTE and p != _CPU]
        return (*local, _CPU)
    chosen = tuple(providers)
    if not chosen or not all(isinstance(p, str) for p in chosen):
        raise InvalidInputError(f"The 'providers' parameter must be a non-empty list of names. Got {providers!r} instead.")
    missing = [p for p in chosen if p not in available]
    if missing:
        raise InvalidInputError(
            f"onnxruntime execution provider(s) {missing} are not in this onnxruntime build; available: {list(available)}. "
            "Fix: install the onnxruntime package that has them (e.g. onnxruntime-gpu for CUDAExecutionProvider) or "
            "pass providers='available'."
        )
    return chosen
