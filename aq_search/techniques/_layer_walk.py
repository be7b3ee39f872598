"""The walk that layer-wise techniques share: select the layers, collect their inputs, visit them in order.

AdaRound and bias correction (and any later layer-wise technique: sequential MSE, GPTQ-like
rounding) work the same way: choose the sim's quantized Conv/ConvTranspose/Linear layers the
technique can handle, turn the calibration data into the model's call arguments, then run all
batches through the sim's graph together, one node at a time, and hand each chosen layer to the
technique when the stepping reaches it, so that it sees the inputs (or outputs) that the layers
before it, already processed, produce. A technique is a :class:`LayerWalk` subclass that says how
it steps the graph and what it does at a layer (as Brevitas' ``gpxq.py`` with ``gptq.py`` /
``gpfq.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils.parametrize import type_before_parametrizations
from tqdm.auto import tqdm

from ..quantsim import QuantSim
from ._config import bad_argument
from ._graph import LAYERS
from ._running import GraphStepper, materialize_batches, model_inputs

__all__ = ["LayerWalk", "ModelInputs", "calibration_inputs", "select_layers"]

#: The model's call arguments, one ``(args, kwargs)`` per calibration batch.
ModelInputs = list[tuple[tuple[Any, ...], dict[str, Any]]]

#: The reason a layer is skipped, or None when the technique takes it.
LayerCheck = Callable[[str, nn.Module], str | None]

NEVER_RAN = "it never ran on the calibration batches"


def calibration_inputs(
    data_loader: Iterable[Any], num_batches: int, forward_fn: Callable[[nn.Module, Any], Any] | None, who: str
) -> ModelInputs:
    """The model's call arguments for the first ``num_batches`` batches of ``data_loader``.

    Args:
        data_loader: a re-iterable of calibration batches.
        num_batches: how many batches to take.
        forward_fn: ``forward_fn(model, batch)`` feeds one batch to the model, or None for
            ``model(batch)`` / ``model(*batch)`` / ``model(**batch)``.
        who: the public function, named in error messages.

    Raises:
        InvalidInputError: ``forward_fn`` is not callable, or the data loader is not a re-iterable of batches or is empty.
    """
    if forward_fn is not None and not callable(forward_fn):
        raise bad_argument("forward_fn", who, "a callable forward_fn(model, batch) or None", forward_fn)
    return model_inputs(materialize_batches(data_loader, num_batches, who), forward_fn)


def select_layers(sim: QuantSim, unsupported: str, check: LayerCheck | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """The sim's weight-quantized layers a technique takes, in execution order, and the others with the reason.

    Args:
        sim: the sim.
        unsupported: the reason for a layer that is not a Conv/ConvTranspose/Linear, formatted with
            ``{kind}``, the layer's class name (e.g. ``"{kind} weights are not adarounded"``).
        check: the technique's own test of a supported layer: the reason to skip it, or None.
    """
    layers: list[str] = []
    skipped: list[tuple[str, str]] = []
    for name in sim.quantized_layers:
        module = sim.layer(name)
        reason = None if isinstance(module, LAYERS) else unsupported.format(kind=type_before_parametrizations(module).__name__)
        if reason is None and check is not None:
            reason = check(name, module)
        if reason is None:
            layers.append(name)
        else:
            skipped.append((name, reason))
    return layers, skipped


class LayerWalk:
    """Steps a sim's graph over all calibration batches at once and visits the chosen layers in order.

    Subclasses set :attr:`progress_label` and :attr:`visit_before_step` and implement
    :meth:`visit`; they may override :meth:`start` (work before the walk, e.g. an FP32 reference
    pass; it may drop layers from :attr:`pending`) and :meth:`step` (e.g. to step a second,
    FP32 copy of the activations). The model is in eval mode during the walk and gets its
    training flag back afterwards.

    Args:
        sim: the sim; the walk does not change it, the visits may.
        layers: the layers to visit (see :func:`select_layers`).
    """

    #: The progress bar's label.
    progress_label: ClassVar[str] = "Layers"
    #: True: a layer is visited before its node runs (it works on the layer's inputs);
    #: False: after (it works on, and may change, the layer's outputs).
    visit_before_step: ClassVar[bool] = True

    def __init__(self, sim: QuantSim, layers: Sequence[str]) -> None:
        self.sim = sim
        self.layers = list(layers)
        self.pending: set[str] = set(layers)
        self.skipped: list[tuple[str, str]] = []
        self.stepper: GraphStepper | None = None

    def start(self, inputs: ModelInputs) -> None:
        """Called in eval mode before the walk; the default sets up one stepper over the sim."""
        self.stepper = GraphStepper(self.sim.model, inputs)

    def step(self, node: fx.Node) -> None:
        """Run one graph node for every batch."""
        assert self.stepper is not None
        self.stepper.step(node)

    def visit(self, node: fx.Node, name: str) -> None:
        """The technique's work at one layer."""
        raise NotImplementedError

    def walk(self, inputs: ModelInputs) -> list[tuple[str, str]]:
        """Visit every pending layer; returns the skipped layers, those that never ran included."""
        model = self.sim.model
        training = model.training
        model.eval()
        progress = tqdm(total=len(self.pending), desc=self.progress_label, unit="layer", disable=None, leave=False)
        try:
            self.start(inputs)
            progress.total = len(self.pending)
            with torch.no_grad():
                for node in model.graph.nodes:
                    if not self.pending:
                        break
                    name = str(node.target)
                    hit = node.op == "call_module" and name in self.pending
                    if hit and self.visit_before_step:
                        self._visit(node, name, progress)
                    self.step(node)
                    if hit and not self.visit_before_step:
                        self._visit(node, name, progress)
        finally:
            progress.close()
            model.train(training)
        self.skipped += [(n, NEVER_RAN) for n in sorted(self.pending)]
        return self.skipped

    def _visit(self, node: fx.Node, name: str, progress: Any) -> None:
        self.pending.discard(name)
        self.visit(node, name)
        progress.update()
