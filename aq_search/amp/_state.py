"""Setting quantizer groups to candidates on a sim, and putting everything back as it was."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .._errors import EncodingsNotComputedError
from ..quantsim import FakeQuantizer, QuantSim
from ._candidates import Candidate
from ._groups import QuantizerGroup

__all__ = ["GroupPrecisions"]


@dataclass(frozen=True)
class _Snapshot:
    bitwidth: int
    dtype: str
    scale: Tensor | None
    zero_point: Tensor | None
    rounding: Tensor | None
    frozen: bool
    enabled: bool

    @classmethod
    def of(cls, q: FakeQuantizer) -> _Snapshot:
        def clone(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().clone()

        return cls(q.bitwidth, q.dtype, clone(q.scale), clone(q.zero_point), clone(q.rounding), q.frozen, q.enabled)

    def restore(self, q: FakeQuantizer) -> None:
        q.set_format(self.bitwidth, self.dtype)
        if self.scale is not None and self.zero_point is not None:
            q.set_encoding(self.scale, self.zero_point)
        else:
            q.scale = None
            q.zero_point = None
        q.rounding = None if self.rounding is None else self.rounding.clone()
        q.frozen = self.frozen
        q.enabled = self.enabled


class GroupPrecisions:
    """Sets quantizer groups of a sim to candidates, starting from (and able to return to) its current state.

    A quantizer set back to its original format gets its original encoding back exactly, AdaRound
    rounding included (AdaRound is only valid at the bit-width it was learned at, so a layer at
    another bit-width uses round-to-nearest from its float weight). Other formats get encodings
    computed from the float weight (weights) or the calibration statistics (activations).
    """

    def __init__(self, sim: QuantSim, groups: Sequence[QuantizerGroup]) -> None:
        self.sim = sim
        acts = sim.activation_quantizers
        self._params: dict[str, list[tuple[str, FakeQuantizer]]] = {}
        self._acts: dict[str, list[tuple[str, FakeQuantizer]]] = {}
        for g in groups:
            params = [(layer, sim.param_quantizer(layer)) for layer in g.layers]
            self._params[g.name] = [(layer, q) for layer, q in params if q.enabled]
            self._acts[g.name] = [(a, acts[a]) for a in g.activation_quantizers if acts[a].enabled]
        self._original: dict[int, _Snapshot] = {}
        self._quantizers: dict[int, FakeQuantizer] = {}
        for items in (*self._params.values(), *self._acts.values()):
            for _, q in items:
                self._original[id(q)] = _Snapshot.of(q)
                self._quantizers[id(q)] = q
        self._dirty: set[int] = set()

    def check_statistics(self, candidates: Sequence[Candidate]) -> None:
        """Raise when an activation quantizer would need an integer format it has no statistics for."""
        formats = {c.activation_format for c in candidates if c.activation_dtype == "int"}
        for group, items in self._acts.items():
            for name, q in items:
                needs = formats - {(self._original[id(q)].bitwidth, self._original[id(q)].dtype)}
                if needs and (q.stats is None or q.stats.empty):
                    raise EncodingsNotComputedError(
                        f"Activation quantizer {name!r} (group {group!r}) has no calibration statistics, so its encoding "
                        f"cannot be recomputed at {', '.join(f'int{b}' for b, _ in sorted(needs))}. Calibrate the sim "
                        "with sim.compute_encodings(batches) (with that quantizer in int format) before mixed precision."
                    )

    def original_param_format(self, layer: str) -> tuple[int, str]:
        snap = self._original[id(self.sim.param_quantizer(layer))]
        return snap.bitwidth, snap.dtype

    def had_rounding(self, layer: str) -> bool:
        q = self.sim.param_quantizer(layer)
        return id(q) in self._original and self._original[id(q)].rounding is not None

    def _set(self, q: FakeQuantizer, fmt: tuple[int, str], layer: str | None) -> None:
        key = id(q)
        snap = self._original[key]
        if fmt == (snap.bitwidth, snap.dtype):
            if key in self._dirty:
                snap.restore(q)
                self._dirty.discard(key)
            return
        if key in self._dirty and (q.bitwidth, q.dtype) == fmt:
            return
        self._dirty.add(key)
        q.set_format(*fmt)
        if fmt[1] != "int":
            return
        if layer is not None:
            with torch.no_grad():
                q.compute_encoding(self.sim.float_weight(layer))
        elif not q.has_encoding:
            raise EncodingsNotComputedError(
                f"An activation quantizer lost its encoding when set to int{fmt[0]}: it has no calibration statistics. "
                "Calibrate the sim with sim.compute_encodings(batches) before mixed precision."
            )

    def set_group(self, group: str, candidate: Candidate) -> None:
        for layer, q in self._params[group]:
            self._set(q, candidate.param_format, layer)
        for _, q in self._acts[group]:
            self._set(q, candidate.activation_format, None)

    def apply(self, assignment: Mapping[str, Candidate]) -> None:
        """Set each group of ``{group name: candidate}`` (groups not named are left as they are)."""
        for group, candidate in assignment.items():
            self.set_group(group, candidate)

    def restore(self) -> None:
        """Put every quantizer this object touched back in its original state."""
        for key in list(self._dirty):
            self._original[key].restore(self._quantizers[key])
        self._dirty.clear()
