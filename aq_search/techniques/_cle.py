"""Cross-layer equalization (CLE) and high-bias absorption (Nagel et al. 2019, "Data-Free Quantization")."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, ClassVar

import torch
import torch.fx as fx
from torch import Tensor, nn

from .._constraints import Boolean, Constraint, Interval, Options
from .._errors import InvalidInputError
from ..quantsim import _ops
from ..quantsim._layers import AVG_POOLS, PASSTHROUGH_LAYERS
from ._bn_fold import META_FOLDED, META_REPORT, META_UNFOLDED, FoldedBatchNorm
from ._config import TechniqueConfig, bad_argument
from ._graph import (
    CONV_TRANSPOSES,
    LAYERS,
    batchnorm_nodes,
    bias_of,
    constant_input_response,
    ensure_bias,
    in_channel_absmax,
    in_channels,
    module_of,
    num_calls,
    out_channel_absmax,
    out_channels,
    prepared_copy,
    scale_in_channels,
    scale_out_channels,
    set_module,
    tensor_shape,
)
from ._registry import Dimension, TechniqueSpec, register_technique

__all__ = ["CLEConfig", "CLEReport", "equalize_model"]

logger = logging.getLogger(__name__)

META_CLE = "cle"

#: Activations that commute with a positive per-channel scale: f(x / s) == f(x) / s.
_HOMOGENEOUS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.LeakyReLU)
#: Ops that act on each channel alone and commute with a positive per-channel scale: the data
#: movement QuantSim does not quantize, less what mixes channels, plus average pooling.
_CHANNEL_MIXING = (nn.Flatten, nn.Unflatten, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle, _ops.Pad)
_LOOK_THROUGH: tuple[type[nn.Module], ...] = (
    *(c for c in PASSTHROUGH_LAYERS if c not in _CHANNEL_MIXING),
    nn.ZeroPad3d,
    *AVG_POOLS,
)
_RELU6_POLICIES = ("always", "unclipped", "never")
_RESHAPES_FN = {torch.flatten, torch.reshape, torch.squeeze}
_RESHAPES_METHOD = {"view", "reshape", "flatten", "squeeze"}


@dataclasses.dataclass(frozen=True)
class CLEConfig(TechniqueConfig):
    """Settings of :func:`equalize_model`.

    Args:
        high_bias_absorption: move the part of a layer's bias that the next ReLU never clips into
            the next layer's bias (uses the folded BatchNorm statistics).
        replace_relu6: which ReLU6 between two layers to replace by a ReLU so that the pair can be
            equalized (ReLU6 does not commute with scaling): ``"always"`` (as in the DFQ paper and
            AIMET), ``"unclipped"`` (only where the folded BatchNorm statistics say the ReLU6 almost
            never clips: expected clipped fraction below ``relu6_clip_tolerance``) or ``"never"``.
            A chain through a ReLU6 that is not replaced is not equalized.
        relu6_clip_tolerance: for ``"unclipped"``: the largest expected fraction of values above 6,
            estimated per channel as a Gaussian with the BatchNorm's ``beta`` and ``|gamma|``.
        num_std: high-bias absorption moves ``max(0, beta - num_std * |gamma|)`` per channel.
        max_iterations: passes over a chain of three or more layers (pairwise scaling repeats
            until the scales converge).
        tolerance: convergence threshold on ``max |log(scale)|`` of a pass.
    """

    technique: ClassVar[str] = "cle"

    high_bias_absorption: bool = True
    replace_relu6: str = "always"
    relu6_clip_tolerance: float = 1e-4
    num_std: float = 3.0
    max_iterations: int = 100
    tolerance: float = 1e-6

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "high_bias_absorption": [Boolean()],
        "replace_relu6": [Options(*_RELU6_POLICIES)],
        "relu6_clip_tolerance": [Interval(float, 0.0, 1.0)],
        "num_std": [Interval(float, 0.0, 10.0)],
        "max_iterations": [Interval(int, 1, 100_000)],
        "tolerance": [Interval(float, 0.0, 1.0, closed="right")],
    }


@dataclasses.dataclass(frozen=True)
class CLEReport:
    """What :func:`equalize_model` did.

    ``equalized``: the chains of layers equalized together, in order.
    ``skipped``: ``(layer, reason)`` for each layer whose output could not be equalized with the next layer.
    ``relu6_replaced``: the ReLU6 modules replaced by ReLU (the model's function changed there).
    ``high_bias_absorbed``: ``(layer, next layer)`` pairs between which bias was moved.
    """

    equalized: tuple[tuple[str, ...], ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()
    relu6_replaced: tuple[str, ...] = ()
    high_bias_absorbed: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass
class _Link:
    first: str
    second: str
    path: list[fx.Node]  # the nodes strictly between the two layers


def _is_relu6(module: nn.Module) -> bool:
    return type(module) is nn.ReLU6 or (type(module) is nn.Hardtanh and (module.min_val, module.max_val) == (0.0, 6.0))


def _keeps_channels(node: fx.Node) -> bool:
    """A reshape of (N, C, 1, ..., 1) to (N, C) or similar: channel c stays channel c."""
    inputs = [a for a in node.all_input_nodes]
    if not inputs:
        return False
    before, after = tensor_shape(inputs[0]), tensor_shape(node)
    if before is None or after is None or len(before) < 2 or len(after) < 2:
        return False
    return before[:2] == after[:2] and math.prod(before[2:]) == 1 and math.prod(after[2:]) == 1


def _spatial_mean(node: fx.Node, module: _ops.Mean) -> bool:
    """A mean over spatial dims only (e.g. ``x.mean((2, 3))``): channel ``c`` stays channel ``c``."""
    inputs = node.all_input_nodes
    before = tensor_shape(inputs[0]) if inputs else None
    if before is None or module.dim is None:
        return False
    dims = module.dim if isinstance(module.dim, tuple) else (module.dim,)
    if not all(isinstance(d, int) for d in dims):
        return False
    return all(d % len(before) >= 2 for d in dims)


def _look_through(gm: fx.GraphModule, node: fx.Node) -> bool:
    module = module_of(gm, node)
    if module is not None:
        if isinstance(module, _LOOK_THROUGH):
            return True
        if isinstance(module, _ops.Mean):
            return _spatial_mean(node, module)
        return isinstance(module, _ops.Pad) and module.mode == "constant" and not module.value
    if node.op == "call_function" and node.target in _RESHAPES_FN:
        return _keeps_channels(node)
    if node.op == "call_method" and str(node.target) in _RESHAPES_METHOD:
        return _keeps_channels(node)
    return False


def _clipped_fraction(stats: FoldedBatchNorm | None) -> float | None:
    """Expected fraction of a folded layer's outputs above 6 (Gaussian per channel), None without statistics."""
    if stats is None:
        return None
    beta, gamma = stats.beta.double(), stats.gamma.double().abs().clamp_min(1e-12)
    return float((0.5 * torch.erfc((6.0 - beta) / (gamma * math.sqrt(2.0)))).mean())


def _relu6_blocker(
    config: CLEConfig, relu6: fx.Node, first: str, path: list[fx.Node], stats: dict[str, FoldedBatchNorm]
) -> str | None:
    """Why the ReLU6 ``relu6`` may not be replaced by a ReLU under the config's policy (None: it may)."""
    if config.replace_relu6 == "always":
        return None
    if config.replace_relu6 == "never":
        return f"it is followed by ReLU6 {relu6.target!r} and replace_relu6 is 'never'"
    fraction = _clipped_fraction(stats.get(first)) if not path else None  # statistics of the layer's own output
    if fraction is None:
        return f"ReLU6 {relu6.target!r} follows it and there are no BatchNorm statistics to tell whether it clips"
    if fraction > config.relu6_clip_tolerance:
        return f"ReLU6 {relu6.target!r} clips about {fraction:.2%} of its inputs (replacing it would change the model)"
    return None


def _next_link(
    gm: fx.GraphModule, node: fx.Node, calls: dict[str, int], config: CLEConfig, stats: dict[str, FoldedBatchNorm]
) -> _Link | str:
    """The layer that CLE can pair with ``node``'s layer, or why there is none."""
    first = str(node.target)
    path: list[fx.Node] = []
    cur = node
    while True:
        users = list(cur.users)
        where = "its output" if cur is node else f"the output of {cur.target!r}"
        if not users:
            return f"{where} is not used"
        if len(users) != 1:
            return f"{where} feeds {len(users)} ops (a residual or branch)"
        user = users[0]
        module = module_of(gm, user)
        if module is not None and isinstance(module, LAYERS):
            name = str(user.target)
            if calls.get(name, 0) != 1:
                return f"the next layer {name!r} is called {calls.get(name, 0)} times (shared weights)"
            if not user.args or user.args[0] is not cur:
                return f"it is not the input of the next layer {name!r}"
            if in_channels(module) != out_channels(gm.get_submodule(first)):
                return f"the next layer {name!r} does not take its channels one to one"
            return _Link(first, name, path)
        if module is not None and isinstance(module, _HOMOGENEOUS):
            pass
        elif module is not None and _is_relu6(module):
            blocker = _relu6_blocker(config, user, first, path, stats)
            if blocker is not None:
                return blocker
        elif not _look_through(gm, user):
            what = type(module).__name__ if module is not None else f"{user.op} {getattr(user.target, '__name__', user.target)}"
            return f"it is followed by {what} {user.name!r}, which does not commute with per-channel scaling"
        path.append(user)
        cur = user


def _chains(links: dict[str, _Link]) -> list[list[str]]:
    """Maximal sequences of linked layers (each layer has at most one link out and one in)."""
    targets = {link.second for link in links.values()}
    chains: list[list[str]] = []
    for start in links:
        if start in targets:
            continue
        chain = [start]
        while chain[-1] in links:
            chain.append(links[chain[-1]].second)
        chains.append(chain)
    return chains


def _equalize_chain(layers: list[nn.Module], config: CLEConfig) -> tuple[list[Tensor], int]:
    """Scale the pairs of a chain until their ranges match; returns the total scale per link (float64)."""
    totals = [torch.ones(out_channels(m), dtype=torch.float64) for m in layers[:-1]]
    iterations = 0
    for iterations in range(1, config.max_iterations + 1):  # noqa: B007 - reported after the loop
        worst = 0.0
        for k in range(len(layers) - 1):
            r1 = out_channel_absmax(layers[k])
            r2 = in_channel_absmax(layers[k + 1])
            ok = (r1 > 0) & (r2 > 0)
            s = torch.where(ok, torch.sqrt(r1 / torch.where(ok, r2, 1.0)), torch.ones_like(r1))
            scale_out_channels(layers[k], 1.0 / s)
            scale_in_channels(layers[k + 1], s)
            totals[k] *= s
            worst = max(worst, float(s.log().abs().max()))
        if worst < config.tolerance or len(layers) == 2:
            break
    return totals, iterations


@torch.no_grad()
def _absorb_high_bias(first: nn.Module, second: nn.Module, stats: FoldedBatchNorm, num_std: float) -> FoldedBatchNorm | None:
    """Move ``c = max(0, beta - num_std |gamma|)`` from ``first``'s bias to ``second``'s; the updated stats."""
    beta, gamma = stats.beta.double(), stats.gamma.double()
    c = torch.clamp(beta - num_std * gamma.abs(), min=0.0)
    first_bias = bias_of(first)
    if not bool((c > 0).any()) or first_bias is None:
        return None
    extra = constant_input_response(second, c)
    first_bias.sub_(c.to(first_bias.dtype))
    bias = ensure_bias(second)
    bias.add_(extra.to(bias.dtype))
    return dataclasses.replace(stats, beta=(beta - c).float())


def _check_folded(gm: fx.GraphModule) -> None:
    meta = gm.meta["aq_search"]
    allowed = set(meta.get(META_UNFOLDED, {})) if META_REPORT in meta else set()
    names = [str(n.target) for n in batchnorm_nodes(gm) if str(n.target) not in allowed]
    if names:
        shown = ", ".join(repr(n) for n in names[:10]) + (" ..." if len(names) > 10 else "")
        raise InvalidInputError(
            f"equalize_model needs the BatchNorms folded first, but the model has {len(names)} unfolded BatchNorm "
            f"layer(s): {shown}. Fix: call fold_all_batch_norms(model, dummy_input) and pass its result to "
            "equalize_model (CLE does not fold BatchNorms itself)."
        )


def equalize_model(folded: nn.Module, dummy_input: Any, config: CLEConfig | None = None) -> fx.GraphModule:
    """Cross-layer equalization with high-bias absorption.

    Finds chains of layers ``conv -> (ReLU | ReLU6 | nothing) -> conv`` (also through zero padding,
    dropout, pooling and depthwise convs) where each intermediate tensor has one consumer, and rescales
    the output channels of each layer and the input channels of the next so that their per-channel
    weight ranges match. Chains of three or more layers (depthwise-separable blocks) are rescaled
    pairwise until the scales converge. Then, with ``high_bias_absorption``, the part of each layer's
    bias that the following ReLU never clips moves into the next layer's bias.

    The FP32 function is preserved, up to the ReLU6 -> ReLU replacements (reported) and the tiny
    change of high-bias absorption (where values fall below ``beta - num_std * |gamma|``, or at
    zero-padded borders of the next layer).

    Args:
        folded: the output of :func:`fold_all_batch_norms` (or any model without BatchNorms); not modified.
        dummy_input: one batch the model accepts.
        config: a :class:`CLEConfig`; defaults when None.

    Returns:
        A prepared ``torch.fx.GraphModule``; ``meta["aq_search"]["cle"]`` holds a :class:`CLEReport`
        and ``meta["aq_search"]["folded_bn"]`` the rescaled BatchNorm statistics.

    Raises:
        InvalidInputError: the model has BatchNorms that were not folded (they are named).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from aq_search.techniques import fold_all_batch_norms
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
        >>> x = torch.randn(1, 3, 8, 8)
        >>> equalized = equalize_model(fold_all_batch_norms(net, x), x)
        >>> equalized.meta["aq_search"]["cle"].equalized
        (('0', '3'),)
    """
    config = CLEConfig() if config is None else config
    if not isinstance(config, CLEConfig):
        raise bad_argument("config", "equalize_model", "a CLEConfig or None", config)
    gm = prepared_copy(folded, dummy_input, "equalize_model")
    _check_folded(gm)
    meta: dict[str, Any] = gm.meta["aq_search"]
    stats: dict[str, FoldedBatchNorm] = dict(meta.get(META_FOLDED, {}))
    calls = num_calls(gm)

    links: dict[str, _Link] = {}
    skipped: list[tuple[str, str]] = []
    for node in gm.graph.nodes:
        module = module_of(gm, node)
        if module is None or not isinstance(module, LAYERS):
            continue
        name = str(node.target)
        if calls[name] != 1:
            skipped.append((name, f"it is called {calls[name]} times (shared weights)"))
            continue
        link = _next_link(gm, node, calls, config, stats)
        if isinstance(link, _Link):
            links[name] = link
        else:
            skipped.append((name, link))

    equalized: list[tuple[str, ...]] = []
    replaced: list[str] = []
    absorbed: list[tuple[str, str]] = []
    for chain in _chains(links):
        layers = [gm.get_submodule(n) for n in chain]
        for link_name in chain[:-1]:
            for between in links[link_name].path:
                module = module_of(gm, between)
                if module is not None and _is_relu6(module):
                    set_module(gm, str(between.target), nn.ReLU())
                    replaced.append(str(between.target))
        totals, iterations = _equalize_chain(layers, config)
        logger.debug("CLE: chain %s converged in %d pass(es)", " -> ".join(chain), iterations)
        for name, total in zip(chain[:-1], totals):
            if name in stats:
                st = stats[name]
                inv = (1.0 / total).float()
                stats[name] = dataclasses.replace(st, gamma=st.gamma * inv, beta=st.beta * inv)
        equalized.append(tuple(chain))
        if not config.high_bias_absorption:
            continue
        for k, name in enumerate(chain[:-1]):
            nxt = chain[k + 1]
            path_modules = [module_of(gm, n) for n in links[name].path]
            relus = [m for m in path_modules if type(m) is nn.ReLU]
            if name not in stats or len(relus) != 1 or isinstance(layers[k + 1], CONV_TRANSPOSES):
                continue
            updated = _absorb_high_bias(layers[k], layers[k + 1], stats[name], config.num_std)
            if updated is not None:
                stats[name] = updated
                absorbed.append((name, nxt))

    gm.graph.lint()
    gm.recompile()
    report = CLEReport(tuple(equalized), tuple(skipped), tuple(replaced), tuple(absorbed))
    meta[META_FOLDED] = stats
    meta[META_CLE] = report
    logger.info(
        "equalize_model: equalized %d chain(s) (%d layers), %d layer(s) without a partner, %d ReLU6 -> ReLU, "
        "high-bias absorption on %d pair(s)",
        len(equalized),
        sum(len(c) for c in equalized),
        len(skipped),
        len(replaced),
        len(absorbed),
    )
    if replaced:
        logger.warning("equalize_model replaced ReLU6 by ReLU (the FP32 function changes there): %s", ", ".join(replaced))
    return gm


def _describe(c: CLEConfig) -> str:
    opts = [] if c.high_bias_absorption else ["no-hba"]
    if c.replace_relu6 != "always":
        opts.append(f"relu6:{c.replace_relu6}")
    return f"cle({', '.join(opts)})" if opts else "cle"


register_technique(
    TechniqueSpec(
        key="cle",
        config_class=CLEConfig,
        apply=equalize_model,
        acts_on="model",
        description="cross-layer equalization + high-bias absorption (needs bnf before it)",
        requires=("bnf",),
        reapply_on_load=True,
        dimensions=(Dimension("high_bias_absorption", bool, True), Dimension("replace_relu6", str, "always")),
        cost="free",
        in_every_space=True,
        describe_config=_describe,
    )
)
