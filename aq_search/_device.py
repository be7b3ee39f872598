"""Which device a model lives on, and the check that its inputs live there too."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from ._errors import InvalidInputError

__all__ = ["check_same_device", "model_device"]


def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter (or buffer); None for a model without tensors."""
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return None


def _same(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    return a.index is None or b.index is None or a.index == b.index


def check_same_device(model: nn.Module, batch: Any, what: str = "dummy_input") -> None:
    """Raise :class:`InvalidInputError` naming both devices when ``batch``'s tensors are not on the model's."""
    device = model_device(model)
    if device is None:
        return
    others = sorted(
        {str(t.device) for t in pytree.tree_leaves(batch) if isinstance(t, Tensor) and not _same(t.device, device)}
    )
    if others:
        raise InvalidInputError(
            f"The model is on {device} but {what} has tensors on {', '.join(others)}. Fix: put both on one device, "
            f"e.g. model.to(device) and every input tensor .to(device) (aq_search follows the model's device)."
        )
