"""Helpers for the data-driven techniques: batches, the FP32 mode of a sim, early-stopped forwards."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from .._data import as_model_args, exhausted_iterator_hint, iterate_batches
from .._errors import CalibrationError, InvalidInputError
from ..quantsim import QuantSim
from ._config import bad_argument

__all__ = ["GraphStepper", "StopForward", "float_mode", "materialize_batches", "model_inputs"]


class StopForward(Exception):
    """Raised by a hook once it has what it needs: the rest of the forward pass is skipped."""


@contextlib.contextmanager
def float_mode(sim: QuantSim) -> Iterator[None]:
    """Every quantizer of the sim off, so it computes the FP32 model (fused ReLU/ReLU6 still apply)."""
    quantizers = list(sim.activation_quantizers.values()) + list(sim.param_quantizers.values())
    states = [q.enabled for q in quantizers]
    for q in quantizers:
        q.enabled = False
    try:
        yield
    finally:
        for q, state in zip(quantizers, states, strict=True):
            q.enabled = state


def materialize_batches(data_loader: Iterable[Any] | None, num_batches: int, who: str) -> list[Any]:
    """The first ``num_batches`` batches as a list (the techniques pass over them many times)."""
    if data_loader is None or isinstance(data_loader, (str, bytes, Tensor)) or not isinstance(data_loader, Iterable):
        raise bad_argument("data_loader", who, "a re-iterable of batches (a DataLoader, a list of tensors ...)", data_loader)
    batches = list(iterate_batches(data_loader, num_batches))
    if not batches:
        raise InvalidInputError(
            f"The 'data_loader' parameter of {who} yielded no batches. Pass a non-empty data loader of calibration batches."
            + exhausted_iterator_hint(data_loader)
        )
    return batches


class _InputRecorder(nn.Module):
    """Stands in for the model in ``forward_fn(model, batch)``: records what the model would be called with."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        raise StopForward


def model_inputs(
    batches: list[Any], forward_fn: Callable[[nn.Module, Any], Any] | None
) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """The model's call arguments for each batch: from the batch itself, or from what ``forward_fn`` passes to the model."""
    if forward_fn is None:
        return [as_model_args(b) for b in batches]
    recorder = _InputRecorder()
    for batch in batches:
        before = len(recorder.calls)
        with contextlib.suppress(StopForward):
            forward_fn(recorder, batch)
        if len(recorder.calls) == before:
            raise CalibrationError(
                "forward_fn(model, batch) did not call the model it was given; it must run the batch through that model, "
                "e.g. `lambda model, batch: model(batch[0])`."
            )
    return recorder.calls


class GraphStepper:
    """Runs a prepared model node by node over several batches in lockstep.

    The data-driven techniques process layers in execution order and need, for each layer, its
    input (AdaRound) or output (bias correction) over all calibration batches, with the changes
    made to earlier layers already in effect. Stepping every batch through the graph one node at
    a time gives that in a single pass (instead of one forward pass per layer); values are freed
    after their last use, so memory is the live activations of all batches.
    """

    def __init__(self, gm: fx.GraphModule, inputs: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> None:
        self.interpreters = [fx.Interpreter(gm, garbage_collect_values=False) for _ in inputs]
        nodes = list(gm.graph.nodes)
        last_use: dict[fx.Node, fx.Node] = {}
        for node in nodes:
            for value in node.all_input_nodes:
                last_use[value] = node
        self._free_after: dict[fx.Node, list[fx.Node]] = {}
        for value, user in last_use.items():
            self._free_after.setdefault(user, []).append(value)
        placeholders = [n for n in nodes if n.op == "placeholder"]
        for interpreter, (args, kwargs) in zip(self.interpreters, inputs, strict=True):
            positional = list(args)
            for ph in placeholders:
                if positional:
                    value = positional.pop(0)
                elif ph.target in kwargs:
                    value = kwargs[str(ph.target)]
                elif ph.args:
                    value = ph.args[0]
                else:
                    raise InvalidInputError(f"a calibration batch does not supply the model input {ph.target!r}")
                interpreter.env[ph] = value

    def step(self, node: fx.Node) -> None:
        """Run ``node`` for every batch (placeholders are bound already; the output node is skipped)."""
        if node.op in ("placeholder", "output"):
            return
        for interpreter in self.interpreters:
            interpreter.env[node] = interpreter.run_node(node)
            for dead in self._free_after.get(node, ()):
                interpreter.env.pop(dead, None)

    def first_input(self, node: fx.Node) -> list[Tensor]:
        """The value of ``node``'s first argument, per batch (call before stepping ``node``)."""
        arg = node.args[0]
        assert isinstance(arg, fx.Node)
        return [interpreter.env[arg] for interpreter in self.interpreters]

    def gather_first_input(self, node: fx.Node) -> Tensor:
        """:meth:`first_input` concatenated over the batches (call before stepping ``node``).

        The batches' values are replaced in the interpreters by views of the result, so the
        activations are held once, not twice (the per-batch tensors and their concatenation).
        """
        parts: list[Any] = self.first_input(node)
        if len(parts) == 1:
            return parts[0]
        arg = node.args[0]
        assert isinstance(arg, fx.Node)
        first = parts[0]
        alike = all(
            p.is_contiguous() and p.dtype == first.dtype and p.device == first.device and p.shape[1:] == first.shape[1:]
            for p in parts
        )
        if alike:  # filled one batch at a time, each batch freed once copied: never two whole copies
            size = (sum(p.shape[0] for p in parts), *first.shape[1:])
            whole = torch.empty(size, dtype=first.dtype, device=first.device)
        else:
            whole = torch.cat(parts)
        del first
        start = 0
        for i, interpreter in enumerate(self.interpreters):
            n = parts[i].shape[0]
            view = whole[start : start + n]
            if alike:
                view.copy_(parts[i])
            interpreter.env[arg] = view
            parts[i] = None
            start += n
        return whole

    def values(self, node: fx.Node) -> list[Any]:
        """``node``'s output, per batch (after stepping it, before its last user)."""
        return [interpreter.env[node] for interpreter in self.interpreters]
