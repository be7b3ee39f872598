"""What model preparation changed and found: :class:`Problem` and :class:`PreparationReport`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["PreparationReport", "Problem"]


@dataclass(frozen=True)
class Problem:
    """One finding of :func:`validate_model`."""

    severity: Literal["error", "warning", "info"]
    where: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"[{self.severity}] {self.where}: {self.message}"
        return f"{text} Fix: {self.fix}" if self.fix else text


@dataclass(frozen=True)
class PreparationReport:
    """What :func:`prepare_model` changed and what it found."""

    changes: tuple[str, ...] = ()
    problems: tuple[Problem, ...] = ()
    input_names: tuple[str, ...] = ()
    num_weight_layers: int = 0
    num_quantizable_ops: int = 0
    #: ``"torch.export"`` or ``"torch.fx"``: the capture front end that produced the graph.
    front_end: str = ""

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "error")

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity == "warning")

    @property
    def ok(self) -> bool:
        """True when nothing blocks quantization."""
        return not self.errors

    def __str__(self) -> str:
        lines = [f"model preparation: {len(self.changes)} change(s), {len(self.problems)} finding(s)"]
        if self.front_end:
            lines.append(f"  captured with {self.front_end}")
        lines += [f"  changed: {c}" for c in self.changes]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


@dataclass
class _State:
    changes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    front_end: str = ""
