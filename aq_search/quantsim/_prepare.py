"""Model preparation: trace with torch.fx and turn functional ops into modules.

After :func:`prepare_model` every value-changing op of the model is a module call in a
``torch.fx.GraphModule``, so each gets its own quantizer and can be addressed by name. Data
movement (``view``, ``permute``, ``getitem``, ``flatten`` ...) stays functional: it does not change
values, so it needs no quantizer.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from .._errors import InvalidInputError, ModelPreparationError
from ._capture import capture_with_export, is_conv1d_gemm
from ._convert import convert_functionals, dedupe_stateless_modules, survey
from ._functional import is_data_movement, node_scope
from ._layers import BATCHNORMS as BATCHNORMS  # re-exported: imported from here elsewhere
from ._layers import FUSABLE_ACTIVATIONS as FUSABLE_ACTIVATIONS
from ._layers import FUSABLE_PRODUCERS as FUSABLE_PRODUCERS
from ._layers import KNOWN_LEAVES
from ._layers import PASSTHROUGH_LAYERS as PASSTHROUGH_LAYERS
from ._layers import WEIGHT_LAYERS as WEIGHT_LAYERS
from ._report import PreparationReport, Problem, _State
from ._trace import capture_layer_chain, check_dummy_input, check_model, leaf_spec, propagate_shapes, run_model, trace_model

__all__ = [
    "PreparationReport",
    "Problem",
    "is_prepared",
    "prepare_model",
    "propagate_shapes",
    "validate_model",
]

# Former names other branches may still import from here.
_KNOWN_LEAVES = KNOWN_LEAVES
_scope = node_scope
_is_data_movement = is_data_movement

logger = logging.getLogger(__name__)

_META_KEY = "aq_search"


def is_prepared(model: nn.Module) -> bool:
    """True for a model returned by :func:`prepare_model` (or a technique applied to one)."""
    return isinstance(model, fx.GraphModule) and _META_KEY in getattr(model, "meta", {})


def _outputs_close(a: Any, b: Any) -> tuple[bool, float]:
    la, lb = pytree.tree_leaves(a), pytree.tree_leaves(b)
    if len(la) != len(lb):
        return False, float("inf")
    worst = 0.0
    for x, y in zip(la, lb, strict=True):
        if isinstance(x, Tensor) and isinstance(y, Tensor):
            if x.shape != y.shape:
                return False, float("inf")
            if x.is_floating_point():
                diff = float((x - y).abs().max()) if x.numel() else 0.0
                worst = max(worst, diff)
                # float32 summation order differs between the graph and eager kernels (and between CPUs); that
                # error grows with the output's scale, so the absolute tolerance follows the reference's magnitude
                scale = float(x.detach().abs().nan_to_num(posinf=0.0, neginf=0.0).max()) if x.numel() else 0.0
                if not torch.allclose(x, y, rtol=1e-4, atol=1e-5 + 1e-4 * scale, equal_nan=True):
                    return False, worst
            elif not torch.equal(x, y):
                return False, float("inf")
    return True, worst


def _finish(gm: fx.GraphModule, dummy_input: Any, reference: Any, state: _State) -> None:
    """Shapes, functional ops -> modules, and the check that the graph computes the model's function."""
    gm.eval()
    propagate_shapes(gm, dummy_input)
    convert_functionals(gm, state)
    dedupe_stateless_modules(gm, state)
    propagate_shapes(gm, dummy_input)
    same, diff = _outputs_close(reference, run_model(gm, dummy_input))
    if not same:
        raise ModelPreparationError(
            f"The captured model computes a different function than the original (max abs difference {diff:.3g}). "
            "The model probably has control flow the capture cannot follow (for example on tensor values or "
            "on self.training). Fix: pass leaf_modules=[...] naming the module with that control flow."
        )


def _without_cache(model: nn.Module) -> nn.Module:
    """A copy in eval mode; Hugging Face models get ``config.use_cache = False`` (no KV-cache outputs)."""
    work = copy.deepcopy(model).eval()
    config = getattr(work, "config", None)
    if config is not None and getattr(config, "use_cache", False):
        config.use_cache = False
    return work


def _short(err: BaseException, limit: int = 600) -> str:
    text = f"{type(err).__name__}: {err}".strip()
    text = text.split("\n\nFor more information", 1)[0]
    return text if len(text) <= limit else text[:limit] + " ..."


def _capture(
    module: nn.Module, dummy_input: Any, leaf_modules: Sequence[type[nn.Module] | str], reference: Any
) -> tuple[fx.GraphModule, _State]:
    """torch.export first, torch.fx symbolic tracing when export (or the graph it gives) fails; a plain
    chain of standard layers is traced with torch.fx directly (the same graph, without export's seconds)."""
    types, names = leaf_spec(leaf_modules)

    def is_leaf(m: nn.Module, path: str) -> bool:
        if path in names or (bool(types) and isinstance(m, types)) or isinstance(m, KNOWN_LEAVES):
            return True
        if is_conv1d_gemm(m):
            return True
        home = type(m).__module__
        return home.startswith(("torch.nn", "torch.ao.nn", "aq_search.")) and not isinstance(m, nn.Sequential)

    chain = capture_layer_chain(_without_cache(module), dummy_input, is_leaf)
    if chain is not None:  # export would give this very graph, seconds later (see capture_layer_chain)
        state = _State(front_end="torch.fx")
        try:
            _finish(chain, dummy_input, reference, state)
        except ModelPreparationError as err:
            logger.debug("the layer chain does not compute the model's function, trying torch.export: %s", err)
        else:
            note = "captured with torch.fx symbolic tracing: a chain of standard layers, the graph torch.export gives"
            state.problems.append(Problem("info", "<model>", note))
            return chain, state
    try:
        captured = capture_with_export(_without_cache(module), dummy_input, is_leaf)
        state = _State(front_end="torch.export")
        _finish(captured.graph_module, dummy_input, reference, state)
        state.problems.append(Problem("info", "<model>", "captured with torch.export"))
        return captured.graph_module, state
    except Exception as err:  # noqa: BLE001 - any export failure falls back to fx and is reported
        export_error = _short(err)
        logger.debug("torch.export could not capture the model, trying torch.fx: %s", export_error)
    state = _State(front_end="torch.fx")
    try:
        gm = trace_model(_without_cache(module), dummy_input, leaf_modules)
        _finish(gm, dummy_input, reference, state)
    except ModelPreparationError as err:
        raise ModelPreparationError(
            f"Neither capture front end could capture the model. torch.export failed with {export_error} "
            f"torch.fx failed with: {err}"
        ) from err
    state.problems.append(
        Problem("info", "<model>", f"captured with torch.fx symbolic tracing; torch.export failed with {export_error}")
    )
    return gm, state


def _prepare(
    model: object, dummy_input: Any, leaf_modules: Sequence[type[nn.Module] | str]
) -> tuple[fx.GraphModule, PreparationReport]:
    module = check_model(model)
    # Hugging Face models: the prepared model runs with use_cache=False, so is the reference
    uses_cache = bool(getattr(getattr(module, "config", None), "use_cache", False))
    reference = check_dummy_input(_without_cache(module) if uses_cache else module, dummy_input)
    if is_prepared(module):
        assert isinstance(module, fx.GraphModule)
        gm = copy.deepcopy(module)
        report = gm.meta[_META_KEY]["report"]
        return gm, report
    gm, state = _capture(module, dummy_input, leaf_modules, reference)
    weight_layers, quantizable = survey(gm, state)
    input_names = tuple(str(n.target) for n in gm.graph.nodes if n.op == "placeholder")
    if weight_layers == 0 and quantizable == 0:
        state.problems.append(
            Problem(
                "error",
                "<model>",
                "the model has nothing to quantize: no Conv/Linear/Embedding layers and no value-changing ops.",
                "pass the model that does the work (not a wrapper whose forward hides it from tracing)",
            )
        )
    report = PreparationReport(
        tuple(state.changes), tuple(state.problems), input_names, weight_layers, quantizable, state.front_end
    )
    gm.meta[_META_KEY] = {"report": report}
    return gm, report


def prepare_model(model: nn.Module, dummy_input: Any, *, leaf_modules: Sequence[type[nn.Module] | str] = ()) -> fx.GraphModule:
    """Trace ``model`` and turn its functional ops into modules; the original model is not modified.

    Args:
        model: the FP32 model.
        dummy_input: one batch (a tensor, a tuple of inputs, or a dict of keyword inputs).
        leaf_modules: module classes or names to keep whole (not traced into), e.g. modules with
            data-dependent control flow.

    Returns:
        A ``torch.fx.GraphModule`` computing the same function, in eval mode; what was changed is in
        ``prepared.meta["aq_search"]["report"]`` (a :class:`PreparationReport`).

    Raises:
        InvalidInputError: ``model`` is not an ``nn.Module`` or rejects ``dummy_input``.
        ModelPreparationError: the model cannot be traced or has nothing to quantize.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
        >>> prepared = prepare_model(net, torch.randn(1, 3, 8, 8))
        >>> [name for name, _ in prepared.named_children() if not name.startswith("_")]  # _guards_fn: torch.export's
        ['0', '1']
    """
    gm, report = _prepare(model, dummy_input, leaf_modules)
    if report.errors:
        raise ModelPreparationError("; ".join(str(p) for p in report.errors))
    for change in report.changes:
        logger.debug("prepare_model: %s", change)
    return gm


def validate_model(
    model: nn.Module, dummy_input: Any, *, leaf_modules: Sequence[type[nn.Module] | str] = ()
) -> PreparationReport:
    """Report what blocks or degrades quantization of ``model``, naming the module and the fix.

    Unlike :func:`prepare_model` it does not raise for problems of the model (untraceable control
    flow, unsupported layers, nothing to quantize): they are findings in the returned report. It
    still raises :class:`InvalidInputError` when ``model`` is not an ``nn.Module``.
    """
    check_model(model)
    try:
        _, report = _prepare(model, dummy_input, leaf_modules)
    except (ModelPreparationError, InvalidInputError) as err:
        if isinstance(err, InvalidInputError) and not isinstance(model, nn.Module):
            raise
        return PreparationReport(problems=(Problem("error", "<model>", str(err)),))
    return report
