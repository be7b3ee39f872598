"""Deployment target profiles: what a runtime runs, as data.

A :class:`TargetProfile` fixes the quantization grids a runtime accepts (signed symmetric or unsigned
asymmetric activations, symmetric weights per channel along the output axis), the precisions it runs
(``"w8a8"``, ``"w4a16"``, ``"fp16"`` ...), and which ONNX ops may read a quantized weight. The search
uses it to build sims on the target's grids and to keep AMP candidates the target runs;
:func:`~aq_search.targets.check_onnx` checks an exported QDQ file against it.

The rules and their public sources are in ``docs/targets.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .._errors import InvalidInputError

if TYPE_CHECKING:
    from ..search._space import SearchSpace

__all__ = ["TARGETS", "TargetProfile", "constrain_space", "get_target"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetProfile:
    """What one deployment runtime runs.

    Args:
        name: the key used in ``AutoQuant(target=...)`` and the YAML ``target:`` key.
        description: one line for messages and the docs.
        activation_symmetric: activations on the signed grid with zero point 0 (``int8``/``int16``)
            instead of the unsigned asymmetric grid (``uint8``/``uint16``).
        formats: the precisions the runtime runs, as AMP candidate names (``"w8a8"``, ``"w4afp32"``
            for weight-only, ``"fp16"``); ``None`` = anything the sim can simulate.
        search_formats: the subset of ``formats`` the search may propose per quantizer group (AMP);
            ``None`` = ``formats``. A format kept out of it is one the runtime runs on some ops only.
        weight_ops: ONNX op types a dequantized weight may feed (``None`` = any).
        int4_weight_ops: ONNX op types a 4-bit weight may feed (``None`` = any op in ``weight_ops``).
        per_channel: weight granularities allowed (``(True, False)``: per channel or per tensor).
        activation_dtypes / weight_dtypes: ONNX element types (``"UINT8"``, ``"INT4"`` ...) the runtime
            takes in an activation QuantizeLinear/DequantizeLinear pair / a weight DequantizeLinear
            (``None`` = any).
        rule: the runtime's rule in words, quoted in error messages.
        source: where the rule is documented (URL).
    """

    name: str
    description: str
    activation_symmetric: bool = False
    formats: tuple[str, ...] | None = None
    search_formats: tuple[str, ...] | None = None
    weight_ops: frozenset[str] | None = None
    int4_weight_ops: frozenset[str] | None = None
    per_channel: tuple[bool, ...] = (True, False)
    activation_dtypes: frozenset[str] | None = None
    weight_dtypes: frozenset[str] | None = None
    rule: str = ""
    source: str = ""

    @property
    def is_generic(self) -> bool:
        return self.formats is None

    def allows(self, candidate: str) -> bool:
        """Whether the runtime runs ``candidate`` (a canonical candidate name such as ``"w8a8"``)."""
        return self.formats is None or candidate in self.formats

    def searchable(self, candidate: str) -> bool:
        """Whether the search may propose ``candidate`` for a quantizer group."""
        if not self.allows(candidate):
            return False
        return self.search_formats is None or candidate in self.search_formats

    def check_bitwidths(self, param_bw: int, output_bw: int, who: str = "AutoQuant") -> None:
        """Raise :class:`InvalidInputError` naming the rule and the fix when ``w{param_bw}a{output_bw}`` is not run."""
        fmt = f"w{param_bw}a{output_bw}"
        if self.allows(fmt):
            return
        assert self.formats is not None
        ints = [f for f in self.formats if f.startswith("w") and "fp" not in f]
        raise InvalidInputError(
            f"{who}: target {self.name!r} cannot run {fmt.upper()} (param_bw={param_bw}, output_bw={output_bw}). "
            f"Rule: {self.rule} Fix: use one of {', '.join(ints)} (param_bw/output_bw), or target='generic' to "
            f"search without a runtime's constraints. Source: {self.source}"
        )

    def check_candidates(self, candidates: Sequence[str], who: str = "mixed_precision_candidates") -> None:
        """Raise when a user-fixed AMP candidate is not one the target runs."""
        bad = [c for c in candidates if not self.searchable(c)]
        if bad:
            allowed = self.search_formats or self.formats or ()
            raise InvalidInputError(
                f"{who}: target {self.name!r} does not run {bad} in a searched model. Rule: {self.rule} "
                f"Fix: choose candidates from {list(allowed)}. Source: {self.source}"
            )

    def filter_candidates(self, candidates: Sequence[str]) -> tuple[str, ...]:
        """The candidates the target runs, in order (the rest dropped, with a log line)."""
        kept = tuple(c for c in candidates if self.searchable(c))
        dropped = [c for c in candidates if c not in kept]
        if dropped:
            logger.info("target %r: AMP candidates %s dropped (%s)", self.name, dropped, self.rule)
        return kept


_ORT_SOURCE = (
    "https://onnx.ai/onnx/operators/onnx__DequantizeLinear.html (int4/uint4/int16/uint16 from opset 21); "
    "https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html (QDQ format, uint8/int8, "
    "16-bit and 4-bit types)"
)
_TRT_SOURCE = (
    "https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/work-quantized-types.html "
    "(symmetric quantization only; INT8 activations and weights; INT4 weight-only)"
)
_QNN_SOURCE = (
    "https://onnxruntime.ai/docs/execution-providers/QNN-ExecutionProvider.html (HTP backend: QDQ models with "
    "uint8/uint16 activations, int8/int4 weights; mixed precision); onnxruntime PR #21171 (int4 weights, "
    "per-tensor and per-channel, on QNN EP)"
)

_WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Gather"})

TARGETS: dict[str, TargetProfile] = {
    "generic": TargetProfile(
        name="generic",
        description="no runtime constraint: any bit-width 2..16, asymmetric unsigned activations (today's default)",
        rule="anything the simulator can simulate.",
    ),
    "onnxruntime": TargetProfile(
        name="onnxruntime",
        description="ONNX Runtime CPU execution provider, QDQ format",
        activation_symmetric=False,
        formats=("w8a8", "w8a16", "w4a8", "w4a16", "w16a16", "w8afp32", "w4afp32", "fp16", "fp32"),
        weight_ops=_WEIGHTED,
        activation_dtypes=frozenset({"UINT8", "INT8", "UINT16", "INT16"}),
        weight_dtypes=frozenset({"INT8", "INT4", "INT16", "UINT8", "UINT4"}),
        rule=(
            "ONNX Runtime runs QuantizeLinear/DequantizeLinear on 8-bit activations (uint8), 16-bit activations "
            "(uint16, opset 21), and 4/8/16-bit weights (int4 and int16 from opset 21); other bit-widths are only "
            "emulated."
        ),
        source=_ORT_SOURCE,
    ),
    "tensorrt": TargetProfile(
        name="tensorrt",
        description="NVIDIA TensorRT explicit quantization (Q/DQ ONNX): INT8 symmetric, INT4 weight-only",
        activation_symmetric=True,
        formats=("w8a8", "w4afp32", "w4afp16", "fp16", "fp32"),
        search_formats=("w8a8", "fp16", "fp32"),
        weight_ops=frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"}),
        int4_weight_ops=frozenset({"Gemm", "MatMul"}),
        activation_dtypes=frozenset({"INT8"}),
        weight_dtypes=frozenset({"INT8", "INT4"}),
        rule=(
            "TensorRT quantizes symmetrically only (zero point 0): INT8 activations and weights (W8A8), and 4-bit "
            "weights only as weight-only quantization (activations in float, GEMM/MatMul layers); no 4-bit or "
            "16-bit integer activations."
        ),
        source=_TRT_SOURCE,
    ),
    "qnn": TargetProfile(
        name="qnn",
        description="Qualcomm QNN HTP (Hexagon NPU), via QNN EP or qnn-onnx-converter",
        activation_symmetric=False,
        formats=("w8a8", "w8a16", "w4a8", "w4a16", "fp16"),
        weight_ops=_WEIGHTED,
        activation_dtypes=frozenset({"UINT8", "UINT16"}),
        weight_dtypes=frozenset({"INT8", "INT4"}),
        rule=(
            "the QNN HTP backend runs W8A8, W8A16, W4A8 and W4A16 (uint8/uint16 asymmetric activations, symmetric "
            "int8/int4 weights) and float16; other integer bit-widths and float32 are not run on HTP."
        ),
        source=_QNN_SOURCE,
    ),
}


def get_target(target: str | TargetProfile | None) -> TargetProfile:
    """The profile for ``"generic"``, ``"onnxruntime"``, ``"tensorrt"``, ``"qnn"`` (``None`` = generic)."""
    if target is None:
        return TARGETS["generic"]
    if isinstance(target, TargetProfile):
        return target
    if not isinstance(target, str) or target.strip().lower() not in TARGETS:
        raise InvalidInputError(
            f"The 'target' parameter must be one of {', '.join(repr(k) for k in TARGETS)}. Got {target!r} instead."
        )
    return TARGETS[target.strip().lower()]


def constrain_space(space: SearchSpace, target: TargetProfile, param_bw: int, output_bw: int) -> SearchSpace:
    """``space`` limited to what ``target`` runs: AMP candidate sets filtered, per-channel choices kept.

    The ``{param_bw}``/``{output_bw}`` templates are filled in; a set left with fewer than two candidates
    is dropped (orderings with ``amp`` then go unused). ``generic`` returns ``space`` unchanged.
    """
    from ..amp import parse_candidate
    from ..search._ampstage import AmpSpace
    from ..search._params import Choice
    from ..search._scheme import SchemeSpace

    if target.is_generic:
        return space
    sets: list[tuple[str, ...]] = []
    for s in space.amp.candidate_sets:
        filled = [parse_candidate(c.format(param_bw=param_bw, output_bw=output_bw)).name for c in s]
        kept = target.filter_candidates(list(dict.fromkeys(filled)))
        if len(kept) >= 2 and kept not in sets:
            sets.append(kept)
    per_channel = tuple(v for v in space.scheme.per_channel.values if v in target.per_channel) or target.per_channel[:1]
    scheme = SchemeSpace(
        candidates=space.scheme.candidates,
        select_candidates=space.scheme.select_candidates,
        per_channel=Choice(per_channel),
        select_by=space.scheme.select_by,
    )
    amp = AmpSpace(candidate_sets=tuple(sets), num_samples_for_phase_1=space.amp.num_samples_for_phase_1)
    return replace(space.with_sections(amp=amp, scheme=scheme), target=target.name)
