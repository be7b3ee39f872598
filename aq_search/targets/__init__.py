"""Deployment targets: the runtime's rules as data (:class:`TargetProfile`).

``AutoQuant(..., target="tensorrt")`` (or ``target:`` in a search space) searches only what that
runtime runs; the rules and their public sources are in ``docs/targets.md``.
"""

from ._check import TargetCheck, check_onnx
from ._profile import TARGETS, TargetProfile, constrain_space, get_target

__all__ = ["TARGETS", "TargetCheck", "TargetProfile", "check_onnx", "constrain_space", "get_target"]
