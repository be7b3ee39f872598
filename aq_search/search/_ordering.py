"""Technique orderings (``"bnf>cle>adaround"``): the rules, read from the technique registry."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .._errors import SearchSpaceError

__all__ = ["STAGES", "validate_ordering"]


class _Stages(Mapping[str, str]):
    """Technique keys usable in an ordering and what each does: a view of the technique registry."""

    def _specs(self) -> Mapping[str, Any]:
        from ..techniques._registry import registered_techniques

        return registered_techniques()

    def __getitem__(self, key: str) -> str:
        return str(self._specs()[key].description)

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs())

    def __len__(self) -> int:
        return len(self._specs())


#: Technique keys usable in an ordering, and what each does (read from the technique registry).
STAGES: Mapping[str, str] = _Stages()


def validate_ordering(ordering: str) -> tuple[str, ...]:
    """Parse ``"bnf>cle>adaround"`` and check it against the technique registry; returns the stage keys.

    Rules: known techniques, each at most once; a technique's ``requires`` present and before it, its
    ``after`` before it when present; techniques that change the float model (``acts_on="model"``)
    before those that change the sim (``bc``/``adaround``/``amp`` ...).

    Raises:
        SearchSpaceError: naming the ordering and the broken rule.
    """
    from ..techniques._registry import registered_techniques

    specs = registered_techniques()
    if not isinstance(ordering, str) or not ordering.strip():
        raise SearchSpaceError(f"an ordering must be a non-empty string like 'bnf>cle>adaround'. Got {ordering!r} instead.")
    stages = tuple(s.strip() for s in ordering.split(">"))
    for s in stages:
        if s not in specs:
            raise SearchSpaceError(f"ordering {ordering!r}: unknown technique {s!r}; valid ones are {', '.join(specs)}.")
    if len(set(stages)) != len(stages):
        raise SearchSpaceError(f"ordering {ordering!r}: a technique appears twice.")
    pos = {s: i for i, s in enumerate(stages)}
    for s in stages:
        for req in specs[s].requires:
            if req not in pos or pos[req] > pos[s]:
                raise SearchSpaceError(f"ordering {ordering!r}: {s} needs {req} first; put {req} before {s}.")
    sim_keys = [k for k, spec in specs.items() if spec.acts_on == "sim"]
    first_sim = min((pos[s] for s in sim_keys if s in pos), default=len(stages))
    for s in stages:
        if specs[s].acts_on == "model" and pos[s] > first_sim:
            raise SearchSpaceError(
                f"ordering {ordering!r}: {s} changes the float model, so it must come before the sim techniques "
                f"({'/'.join(sim_keys)}): their results would be invalidated."
            )
    for s in stages:
        for before in specs[s].after:
            if before in pos and pos[before] > pos[s]:
                raise SearchSpaceError(f"ordering {ordering!r}: {before} must come before {s} (it uses {before}'s result).")
    return stages
