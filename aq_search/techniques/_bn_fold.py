"""BatchNorm folding: merge eval-mode BatchNorms into the adjacent Conv/ConvTranspose/Linear layer."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, ClassVar

import torch
import torch.fx as fx
from torch import Tensor, nn

from .._constraints import Boolean, Constraint
from ..quantsim._layers import BATCHNORMS
from ..quantsim._trace import propagate_shapes
from ._config import TechniqueConfig, bad_argument
from ._graph import (
    CONVS,
    LAYERS,
    constant_input_response,
    ensure_bias,
    in_channels,
    module_of,
    num_calls,
    out_channels,
    prepared_copy,
    scale_in_channels,
    scale_out_channels,
    tensor_shape,
)
from ._registry import TechniqueSpec, register_technique

__all__ = ["BatchNormFoldConfig", "BatchNormFoldReport", "FoldedBatchNorm", "fold_all_batch_norms"]

logger = logging.getLogger(__name__)

#: Keys of ``model.meta["aq_search"]`` written by :func:`fold_all_batch_norms`.
META_FOLDED = "folded_bn"
META_UNFOLDED = "unfolded_bn"
META_REPORT = "bn_fold"


@dataclasses.dataclass(frozen=True)
class BatchNormFoldConfig(TechniqueConfig):
    """Settings of :func:`fold_all_batch_norms`.

    Args:
        fold_into_following: also fold a BatchNorm into the Conv/Linear layer that follows it when
            no layer precedes it (exact only when that conv has no zero padding; checked).
    """

    technique: ClassVar[str] = "bnf"

    fold_into_following: bool = True

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {"fold_into_following": [Boolean()]}


@dataclasses.dataclass(frozen=True, eq=False)
class FoldedBatchNorm:
    """The statistics of a BatchNorm folded into the layer before it (float32, per channel).

    The folded layer's output is distributed like the BatchNorm's output was, with mean ``beta`` and
    standard deviation ``|gamma|`` per channel: high-bias absorption uses that. Techniques that rescale
    the layer's output channels (CLE) store the rescaled statistics.
    """

    gamma: Tensor
    beta: Tensor
    mean: Tensor
    var: Tensor
    eps: float


@dataclasses.dataclass(frozen=True)
class BatchNormFoldReport:
    """What :func:`fold_all_batch_norms` did.

    ``folded``: ``(batchnorm, layer, "forward" | "backward")``: forward means the BN followed the layer.
    ``unfolded``: ``(batchnorm, reason)`` for each BatchNorm left in the model.
    """

    folded: tuple[tuple[str, str, str], ...] = ()
    unfolded: tuple[tuple[str, str], ...] = ()


def _bn_affine(bn: nn.Module) -> tuple[Tensor, Tensor, Tensor, Tensor, float]:
    """gamma, beta, running mean and variance (float64) and eps of an eval-mode BatchNorm."""
    assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
    assert bn.running_mean is not None and bn.running_var is not None
    c = bn.num_features
    mean = bn.running_mean.detach().double()
    var = bn.running_var.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones(c, dtype=torch.float64)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros(c, dtype=torch.float64)
    return gamma, beta, mean, var, float(bn.eps)


def _why_not_forward(gm: fx.GraphModule, node: fx.Node, bn: nn.Module, calls: dict[str, int]) -> str | None:
    """None when the BN can be folded into the layer producing its input, else the reason."""
    producer = node.args[0] if node.args else None
    layer = module_of(gm, producer)
    if not isinstance(producer, fx.Node) or layer is None or not isinstance(layer, LAYERS):
        what = f"{producer.op} {producer.target!r}" if isinstance(producer, fx.Node) else repr(producer)
        if layer is not None:
            what = f"{type(layer).__name__} {producer.target!r}"  # type: ignore[union-attr]
        return f"its input comes from {what}, not a Conv/ConvTranspose/Linear layer"
    name = str(producer.target)
    if calls.get(name, 0) != 1:
        return f"the layer before it, {name!r}, is called {calls.get(name, 0)} times (shared weights)"
    if len(producer.users) != 1:
        return f"the output of {name!r} also feeds {len(producer.users) - 1} other op(s)"
    if out_channels(layer) != bn.num_features:
        return f"{name!r} has {out_channels(layer)} output channels, the BatchNorm {bn.num_features}"
    if isinstance(layer, nn.Linear) and len(tensor_shape(producer) or ()) != 2:
        return f"the output of Linear {name!r} is not 2-d, so the BatchNorm does not normalize its features"
    return None


def _why_not_backward(gm: fx.GraphModule, node: fx.Node, bn: nn.Module, calls: dict[str, int]) -> str | None:
    """None when the BN can be folded into the layer consuming its output, else the reason."""
    if len(node.users) != 1:
        return f"its output feeds {len(node.users)} ops"
    consumer = next(iter(node.users))
    layer = module_of(gm, consumer)
    if layer is None or not isinstance(layer, (*CONVS, nn.Linear)):
        what = type(layer).__name__ if layer is not None else consumer.op
        return f"its output feeds {what} {consumer.target!r}, not a Conv/Linear layer"
    name = str(consumer.target)
    if calls.get(name, 0) != 1:
        return f"the layer after it, {name!r}, is called {calls.get(name, 0)} times (shared weights)"
    if not consumer.args or consumer.args[0] is not node:
        return f"it is not the input of {name!r}"
    if in_channels(layer) != bn.num_features:
        return f"{name!r} has {in_channels(layer)} input channels, the BatchNorm {bn.num_features}"
    if isinstance(layer, nn.Linear):
        if len(tensor_shape(node) or ()) != 2:
            return f"its output is not 2-d, so Linear {name!r} does not act on the normalized features"
        return None
    padding: Any = getattr(layer, "padding", ())
    zero_padded = padding != "valid" if isinstance(padding, str) else any(int(p) != 0 for p in padding)
    if zero_padded and layer.padding_mode == "zeros":
        return f"{name!r} pads with zeros (folding into it would change the border outputs)"
    return None


def _scale_shift(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """The BatchNorm as ``y = x * scale + shift`` per channel (eval mode, float64)."""
    gamma, beta, mean, var, eps = _bn_affine(bn)
    scale = gamma / torch.sqrt(var + eps)
    return scale, beta - mean * scale


@torch.no_grad()
def _fold_forward(layer: nn.Module, bn: nn.Module) -> FoldedBatchNorm:
    gamma, beta, mean, var, eps = _bn_affine(bn)
    scale, shift = _scale_shift(bn)
    bias = ensure_bias(layer)
    scale_out_channels(layer, scale)
    bias.add_(shift.to(bias.dtype))
    return FoldedBatchNorm(gamma.float(), beta.float(), mean.float(), var.float(), eps)


@torch.no_grad()
def _fold_backward(bn: nn.Module, layer: nn.Module) -> None:
    scale, shift = _scale_shift(bn)
    extra = constant_input_response(layer, shift)
    bias = ensure_bias(layer)
    bias.add_(extra.to(bias.dtype))
    scale_in_channels(layer, scale)


def fold_all_batch_norms(model: nn.Module, dummy_input: Any, config: BatchNormFoldConfig | None = None) -> fx.GraphModule:
    """Fold every BatchNorm that can be folded into its Conv/ConvTranspose/Linear layer.

    A BatchNorm is folded into the layer before it when it is that layer's only consumer (any
    Conv1d/2d/3d including depthwise and grouped, ConvTranspose, Linear + BatchNorm1d); otherwise
    into the Conv/Linear layer after it when it is that layer's only input and the fold is exact
    (no zero padding in that conv). The folded model computes the same function in eval mode.

    Args:
        model: a model (raw or prepared with :func:`~aq_search.prepare_model`); not modified.
        dummy_input: one batch the model accepts.
        config: a :class:`BatchNormFoldConfig`; defaults when None.

    Returns:
        A prepared ``torch.fx.GraphModule`` without the folded BatchNorms. Its
        ``meta["aq_search"]`` holds ``"folded_bn"`` (``{layer: FoldedBatchNorm}`` for the forward
        folds, used by high-bias absorption), ``"unfolded_bn"`` (``{batchnorm: reason}``, also
        logged as a warning) and ``"bn_fold"`` (a :class:`BatchNormFoldReport`).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        >>> folded = fold_all_batch_norms(net.eval(), torch.randn(1, 3, 8, 8))
        >>> [type(m).__name__ for _, m in folded.named_children()]
        ['Conv2d', 'ReLU']
    """
    config = BatchNormFoldConfig() if config is None else config
    if not isinstance(config, BatchNormFoldConfig):
        raise bad_argument("config", "fold_all_batch_norms", "a BatchNormFoldConfig or None", config)
    gm = prepared_copy(model, dummy_input, "fold_all_batch_norms")
    meta: dict[str, Any] = gm.meta["aq_search"]
    stats: dict[str, FoldedBatchNorm] = dict(meta.get(META_FOLDED, {}))
    folded: list[tuple[str, str, str]] = []
    unfolded: dict[str, str] = {}
    calls = num_calls(gm)
    for node in list(gm.graph.nodes):
        bn = module_of(gm, node)
        if bn is None or not isinstance(bn, BATCHNORMS):
            continue
        name = str(node.target)
        if calls[name] != 1:
            unfolded[name] = f"it is called {calls[name]} times"
            continue
        if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
            unfolded[name] = "it has no running statistics (track_running_stats=False), so it normalizes with batch statistics"
            continue
        forward = _why_not_forward(gm, node, bn, calls)
        if forward is None:
            producer = node.args[0]
            assert isinstance(producer, fx.Node)
            layer_name = str(producer.target)
            stats[layer_name] = _fold_forward(gm.get_submodule(layer_name), bn)
            node.replace_all_uses_with(producer)
            folded.append((name, layer_name, "forward"))
        else:
            backward = (
                _why_not_backward(gm, node, bn, calls) if config.fold_into_following else "folding into the next layer is off"
            )
            if backward is not None:
                unfolded[name] = f"{forward}; and {backward}"
                continue
            consumer = next(iter(node.users))
            layer_name = str(consumer.target)
            _fold_backward(bn, gm.get_submodule(layer_name))
            source = node.args[0]
            assert isinstance(source, fx.Node)
            node.replace_all_uses_with(source)
            folded.append((name, layer_name, "backward"))
        gm.graph.erase_node(node)
        gm.delete_submodule(name)
    gm.graph.lint()
    gm.recompile()
    if folded:
        propagate_shapes(gm, dummy_input)
    report = BatchNormFoldReport(tuple(folded), tuple(unfolded.items()))
    meta[META_FOLDED] = stats
    meta[META_UNFOLDED] = dict(unfolded)
    meta[META_REPORT] = report
    logger.info("fold_all_batch_norms: folded %d BatchNorm(s)", len(folded))
    for bn_name, reason in unfolded.items():
        logger.warning("fold_all_batch_norms: BatchNorm %r is not folded: %s", bn_name, reason)
    return gm


register_technique(
    TechniqueSpec(
        key="bnf",
        config_class=BatchNormFoldConfig,
        apply=fold_all_batch_norms,
        acts_on="model",
        description="BatchNorm folding",
        reapply_on_load=True,
        cost="free",
        meta_key="bn_fold",
    )
)
