"""AMP's measurements: the counting eval wrapper, the output probe and SQNR, argument checks."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from .._constraints import parameter_error
from .._errors import CalibrationError, EvalCallbackError
from .._numerics import signal_and_noise
from ..quantsim import QuantSim
from ._candidates import Candidate
from ._types import EvalCallback


# -- evaluation -----------------------------------------------------------------------------------------
def _callable_name(fn: object) -> str:
    name = str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__)
    return name.rsplit(".<locals>.", 1)[-1]


class _Evaluator:
    """Calls the user's eval callback in eval mode without gradients; checks and counts the results."""

    def __init__(self, sim: QuantSim, callback: EvalCallback) -> None:
        self.sim = sim
        self.callback = callback
        self.name = _callable_name(callback)
        self.calls = 0

    def __call__(self, num_samples: int | None, phase: str) -> float:
        model = self.sim.model
        training = model.training
        model.eval()
        try:
            with torch.no_grad():
                value = self.callback(model, num_samples)
        except Exception as err:
            raise EvalCallbackError(
                f"The eval_callback {self.name!r} raised {type(err).__name__}: {err} during {phase}. It is called as "
                "eval_callback(model, num_samples) and must return a number, higher is better."
            ) from err
        finally:
            model.train(training)
        self.calls += 1
        return _score(value, self.name, phase)


def _score(value: object, name: str, phase: str) -> float:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        score = float(value)
        if math.isfinite(score):
            return score
    shown = repr(value) if isinstance(value, (numbers.Number, str, type(None))) else f"a {type(value).__name__}"
    raise EvalCallbackError(
        f"The eval_callback {name!r} returned {shown} during {phase}. It must return a finite number, higher is "
        "better (e.g. top-1 accuracy in [0, 1])."
    )


class _OutputProbe:
    """Runs the calibration data (``run_fn(model)``) and collects the model's float outputs (for the SQNR metric)."""

    def __init__(self, sim: QuantSim, run_fn: Callable[[nn.Module], None]) -> None:
        self.sim = sim
        self.run_fn = run_fn

    def __call__(self, phase: str) -> list[Tensor]:
        outputs: list[Tensor] = []

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            outputs.extend(
                t.detach().float() for t in pytree.tree_leaves(output) if isinstance(t, Tensor) and t.is_floating_point()
            )

        model = self.sim.model
        handle = model.register_forward_hook(hook)
        training = model.training
        model.eval()
        try:
            with torch.no_grad():
                self.run_fn(model)
        except Exception as err:
            raise CalibrationError(f"forward_pass_callback raised {type(err).__name__}: {err} during {phase}.") from err
        finally:
            handle.remove()
            model.train(training)
        if not outputs:
            raise CalibrationError(
                f"forward_pass_callback ran no batch through the model during {phase}: it must call the model it is given, "
                "e.g. `lambda model: [model(x) for x in calibration_batches]`."
            )
        return outputs


def _noise_ratio(reference: Sequence[Tensor], outputs: Sequence[Tensor]) -> float:
    if len(reference) != len(outputs):
        raise CalibrationError(
            "forward_pass_callback ran a different number of batches from one call to the next; it must be deterministic."
        )
    signal, noise = signal_and_noise(reference, outputs)
    return noise / signal if signal > 0 else (0.0 if noise == 0 else math.inf)


def _sqnr_db(ratio: float) -> float:
    return math.inf if ratio == 0 else -10.0 * math.log10(ratio) if math.isfinite(ratio) else -math.inf


# -- the search -----------------------------------------------------------------------------------------
def _check_number(value: object, name: str, who: str, *, minimum: float | None = None) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok and minimum is not None:
        ok = float(value) >= minimum  # type: ignore[arg-type]
    if not ok:
        must = "a finite number" + (f" >= {minimum}" if minimum is not None else "")
        raise parameter_error(name, who, must, value)
    return float(value)  # type: ignore[arg-type]


def _has_encodings(sim: QuantSim) -> bool:
    quantizers = list(sim.activation_quantizers.values()) + list(sim.param_quantizers.values())
    return any(q.enabled and q.dtype == "int" and q.scale is not None for q in quantizers)


def _describe(assignment: Mapping[str, Candidate]) -> str:
    names = {c.name for c in assignment.values()}
    return f"all-{names.pop()}" if len(names) == 1 else "all-highest"
