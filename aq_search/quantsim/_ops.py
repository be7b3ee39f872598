"""Modules for functional ops, so that each op in a prepared graph gets its own quantizer.

``prepare_model`` replaces ``x + y``, ``torch.cat``, ``torch.matmul``, ``F.relu`` ... by these
modules (or by the matching ``torch.nn`` module where one exists).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "Add",
    "Concat",
    "Div",
    "FunctionalOp",
    "MatMul",
    "Mean",
    "Mul",
    "Pad",
    "Sub",
]


class Add(nn.Module):
    """``a + b``."""

    def forward(self, a: Any, b: Any) -> Any:
        return a + b


class Sub(nn.Module):
    """``a - b``."""

    def forward(self, a: Any, b: Any) -> Any:
        return a - b


class Mul(nn.Module):
    """``a * b``."""

    def forward(self, a: Any, b: Any) -> Any:
        return a * b


class Div(nn.Module):
    """``a / b``."""

    def forward(self, a: Any, b: Any) -> Any:
        return a / b


class MatMul(nn.Module):
    """``torch.matmul(a, b)`` (also stands for ``@`` and ``torch.bmm``)."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.matmul(a, b)


class Concat(nn.Module):
    """``torch.cat(tensors, dim)``; the tensors are passed as separate arguments."""

    def __init__(self, dim: int = 0) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, *tensors: Tensor) -> Tensor:
        return torch.cat(tensors, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Mean(nn.Module):
    """``x.mean(dim, keepdim)``."""

    def __init__(self, dim: Any = None, keepdim: bool = False) -> None:
        super().__init__()
        self.dim = tuple(dim) if isinstance(dim, list) else dim
        self.keepdim = keepdim

    def forward(self, x: Tensor) -> Tensor:
        if self.dim is None:
            return x.mean()
        return x.mean(self.dim, keepdim=self.keepdim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, keepdim={self.keepdim}"


class Pad(nn.Module):
    """``F.pad(x, pad, mode, value)``."""

    def __init__(self, pad: tuple[int, ...], mode: str = "constant", value: float | None = None) -> None:
        super().__init__()
        self.pad = tuple(pad)
        self.mode = mode
        self.value = value

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.pad(x, self.pad, self.mode, self.value)

    def extra_repr(self) -> str:
        return f"pad={self.pad}, mode={self.mode!r}, value={self.value}"


_FUNCTIONS: dict[str, Any] = {
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt,
    "pow": torch.pow,
    "erf": torch.erf,
    "neg": torch.neg,
    "abs": torch.abs,
    "square": torch.square,
    "reciprocal": torch.reciprocal,
    "sum": torch.sum,
    "var": torch.var,
    "std": torch.std,
    "clamp": torch.clamp,
    "maximum": torch.maximum,
    "minimum": torch.minimum,
    "einsum": torch.einsum,
    "baddbmm": torch.baddbmm,
    "addmm": torch.addmm,
    "cumsum": torch.cumsum,
    "interpolate": torch.nn.functional.interpolate,
    "normalize": torch.nn.functional.normalize,
    "log_softmax": torch.nn.functional.log_softmax,
    "where": torch.where,
}


class FunctionalOp(nn.Module):
    """A value-changing torch function without a dedicated module (``torch.exp``, ``pow`` ...).

    Constant arguments are stored on the module; tensor arguments are passed at call time.
    """

    def __init__(self, function: str, kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        if function not in _FUNCTIONS:
            raise KeyError(function)
        self.function = function
        self.kwargs = dict(kwargs or {})

    def forward(self, *args: Any) -> Any:
        return _FUNCTIONS[self.function](*args, **self.kwargs)

    def extra_repr(self) -> str:
        return f"{self.function}, kwargs={self.kwargs}" if self.kwargs else self.function


def functional_names() -> tuple[str, ...]:
    return tuple(_FUNCTIONS)
