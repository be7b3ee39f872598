"""AdaRound: layer-wise learned rounding of the weights (Nagel et al. 2020, "Up or Down?").

For each quantized layer, in execution order, the rounding of every weight (down or up from
``floor(w / scale)``) is learned so that the layer's output on cached calibration inputs matches the
FP32 output. The soft rounding is the rectified sigmoid ``h(V)``; a regularizer with an annealed
temperature ``beta`` pushes ``h`` to 0 or 1; the result is stored in the weight quantizer as a 0/1
``rounding`` tensor, and the quantizer's encoding is frozen.

Speed on CPU:

* the calibration batches go through the model once, in lockstep, one graph node at a time, and
  each layer is optimized when the stepping reaches it (not one forward pass per layer);
* each iteration works on a window of about ``batch_size`` output positions (whole images when
  they are smaller) cut from the cached input, with the native convolution and its weight gradient
  in channels-last layout, so its cost is ``batch_size x in_channels/groups x kernel x out_channels``
  multiply-adds whatever the image size;
* the soft-rounding gradient is written out by hand (no autograd graph) and Adam is the fused kernel.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from .._data import tensor_fingerprint
from .._errors import EncodingsNotComputedError
from ..quantsim import FakeQuantizer, QuantSim
from ._adaround_opt import (
    _VERSION,
    META_ADAROUND,
    AdaRoundLayerResult,
    AdaRoundParams,
    AdaRoundReport,
    _functional,
    _grid,
    _optimize,
)
from ._cache import TensorCache
from ._config import bad_argument
from ._graph import bias_of
from ._layer_walk import LayerWalk, ModelInputs, calibration_inputs, select_layers
from ._registry import Dimension, SuggestContext, TechniqueSpec, register_technique
from ._running import GraphStepper, float_mode

__all__ = ["AdaRoundLayerResult", "AdaRoundParams", "AdaRoundReport", "apply_adaround"]

logger = logging.getLogger(__name__)


# -- data -------------------------------------------------------------------------------------------
def _fused_clamp(sim: QuantSim, name: str) -> tuple[float, float] | None:
    """The ReLU/ReLU6 that follows the layer's output (folded into a quantizer, or still a module)."""
    nodes = [n for n in sim.model.graph.nodes if n.op == "call_module" and str(n.target) == name]
    if len(nodes) != 1:
        return None
    cur: fx.Node = nodes[0]
    while len(cur.users) == 1:
        user = next(iter(cur.users))
        if user.op != "call_module":
            return None
        module = sim.model.get_submodule(str(user.target))
        if isinstance(module, FakeQuantizer):
            if module.fused_clamp is not None:
                return module.fused_clamp
            if module.enabled:
                return None
            cur = user
            continue
        if type(module) is nn.ReLU:
            return (0.0, math.inf)
        if type(module) is nn.ReLU6:
            return (0.0, 6.0)
        if type(module) is nn.Hardtanh and module.min_val <= 0.0 <= module.max_val:
            return (float(module.min_val), float(module.max_val))
        return None
    return None


def _layer_key(
    module: nn.Module,
    w: Tensor,
    quantizer: FakeQuantizer,
    clamp: tuple[float, float] | None,
    params: AdaRoundParams,
    seed: int,
    x_opt: Tensor,
    x_fp: Tensor | None,
) -> str:
    hyper = {
        k: repr(getattr(module, k, None)) for k in ("stride", "padding", "dilation", "groups", "output_padding", "padding_mode")
    }
    return tensor_fingerprint(
        _VERSION,
        type(module).__name__,
        hyper,
        w,
        bias_of(module),
        quantizer.scale,
        quantizer.zero_point,
        quantizer.quant_range,
        quantizer.axis,
        clamp,
        params.to_dict(),
        seed,
        x_opt,
        x_fp,
    )


def _output(module: nn.Module, x: Tensor, weight: Tensor, clamp: tuple[float, float] | None) -> Tensor:
    """The layer's output after its fused clamp (clamped in place: one output-sized tensor, not two)."""
    y = _functional(module, x, weight)
    if clamp is not None:
        lo, hi = clamp
        y.clamp_(min=lo) if hi == math.inf else y.clamp_(lo, hi)
    return y


def _target(module: nn.Module, x_fp: Tensor, weight: Tensor, clamp: tuple[float, float] | None, chunk: int = 16) -> Tensor:
    """The FP32 output on the cached inputs, computed ``chunk`` images at a time into one tensor (a whole-batch
    convolution on CPU holds its output twice while it converts the layout: 2x the target at once)."""
    if x_fp.shape[0] <= chunk:
        return _output(module, x_fp, weight, clamp)
    first = _output(module, x_fp[:chunk], weight, clamp)
    target = torch.empty((x_fp.shape[0], *first.shape[1:]), dtype=first.dtype, device=first.device)
    target[:chunk] = first
    del first
    for i in range(chunk, x_fp.shape[0], chunk):
        target[i : i + chunk] = _output(module, x_fp[i : i + chunk], weight, clamp)
    return target


def _mse(
    module: nn.Module, x: Tensor, weight: Tensor, target: Tensor, clamp: tuple[float, float] | None, chunk: int = 16
) -> float:
    """Mean squared error of the layer's output against ``target``, ``chunk`` images at a time (squared in
    float64): memory is one chunk's output, not a copy of the whole output (and two float64 ones)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, x.shape[0], chunk):
            d = _output(module, x[i : i + chunk], weight, clamp).sub_(target[i : i + chunk])
            for j in range(0, d.shape[0], 4):  # squared in float64 4 images at a time
                total += float(d[j : j + 4].double().pow_(2).sum())
            count += d.numel()
    return total / max(1, count)


def _check_sim(sim: object, params: object, seed: object) -> QuantSim:
    if not isinstance(sim, QuantSim):
        raise bad_argument("sim", "apply_adaround", "a QuantSim", sim)
    if not isinstance(params, AdaRoundParams):
        raise bad_argument("params", "apply_adaround", "an AdaRoundParams", params)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise bad_argument("seed", "apply_adaround", "an int >= 0", seed)
    return sim


def _adaround_layer(
    sim: QuantSim,
    name: str,
    x_fp: Tensor,
    x_opt: Tensor,
    params: AdaRoundParams,
    cache: TensorCache | None,
    seed: int,
) -> AdaRoundLayerResult:
    """Learn (or load from the cache) one layer's rounding and install it in its weight quantizer."""
    start = time.perf_counter()
    module, quantizer = sim.layer(name), sim.param_quantizer(name)
    clamp = _fused_clamp(sim, name)
    w = sim.float_weight(name).detach()
    with torch.no_grad():
        target = _target(module, x_fp, w, clamp)
    key = _layer_key(module, w, quantizer, clamp, params, seed, x_opt, x_fp if x_opt is not x_fp else None)
    stored = cache.get(key) if cache is not None else None
    rounding = stored.get("rounding") if stored is not None else None
    hit = rounding is not None and tuple(rounding.shape) == tuple(w.shape)
    if rounding is not None:
        rounding = rounding.to(w.device)  # the cache stores (and loads) on the CPU
    if not hit:
        rounding = _optimize(module, w, x_opt, target, quantizer, clamp, params, seed)
        if cache is not None:
            cache.put(key, {"rounding": rounding})
    assert rounding is not None
    grid = _grid(quantizer, w.shape)
    rtn_mse = _mse(module, x_opt, grid.rtn(w), target, clamp)
    ada_mse = _mse(module, x_opt, grid.rounded(w, rounding.to(w.dtype)), target, clamp)
    nearest = ada_mse > rtn_mse
    if nearest:
        logger.info(
            "AdaRound %s: the learned rounding reconstructs worse than round-to-nearest (mse %.3g > %.3g); "
            "keeping round-to-nearest (try a larger reg_param or more iterations)",
            name,
            ada_mse,
            rtn_mse,
        )
        ratio = w / grid.scale
        rounding = (torch.round(ratio) - torch.floor(ratio)).to(torch.uint8)
    quantizer.rounding = rounding.to(device=w.device, dtype=torch.uint8)
    quantizer.frozen = True
    seconds = time.perf_counter() - start
    logger.debug("AdaRound %s: mse %.3g -> %.3g (%s, %.2fs)", name, rtn_mse, ada_mse, "cached" if hit else "optimized", seconds)
    return AdaRoundLayerResult(name, rtn_mse, ada_mse, hit, seconds, nearest)


class _AdaRoundWalk(LayerWalk):
    """At each layer, before it runs: learn its rounding from its cached FP32 (and quantized) inputs."""

    progress_label = "AdaRound"
    visit_before_step = True

    def __init__(self, sim: QuantSim, layers: list[str], params: AdaRoundParams, cache: TensorCache | None, seed: int) -> None:
        super().__init__(sim, layers)
        self.params, self.cache, self.seed = params, cache, seed
        self.results: list[AdaRoundLayerResult] = []
        self.quant: GraphStepper | None = None

    def start(self, inputs: ModelInputs) -> None:
        super().start(inputs)  # the FP32 activations
        self.quant = GraphStepper(self.sim.model, inputs) if self.params.use_quantized_inputs else None

    def step(self, node: fx.Node) -> None:
        with float_mode(self.sim):
            super().step(node)
        if self.quant is not None:
            self.quant.step(node)

    def visit(self, node: fx.Node, name: str) -> None:
        assert self.stepper is not None
        x_fp = self.stepper.gather_first_input(node)
        x_opt = self.quant.gather_first_input(node) if self.quant is not None else x_fp
        self.results.append(_adaround_layer(self.sim, name, x_fp, x_opt, self.params, self.cache, self.seed))


def apply_adaround(
    sim: QuantSim,
    data_loader: Iterable[Any],
    params: AdaRoundParams,
    *,
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    cache: TensorCache | None = None,
    seed: int = 0,
) -> QuantSim:
    """Learn the weight rounding of every quantized Conv/ConvTranspose/Linear layer of ``sim``.

    All batches go through the model together, one graph node at a time, so the calibration data
    is run once (not once per layer); memory holds the live activations of ``num_batches`` batches.

    Each layer starts from its FLOAT weights and the weight encoding already in the sim (so call
    ``sim.compute_encodings`` first). Layers are processed in execution order; each one's inputs are
    cached from the first ``params.num_batches`` batches: with ``params.use_quantized_inputs``
    (the default) the quantized model's, which already uses the rounding learned for the layers
    before it, else the FP32 model's. The target is the FP32 output after the layer's fused ReLU/ReLU6.
    A learned rounding that reconstructs worse than round-to-nearest on the cached data is not
    used (the layer keeps round-to-nearest; the report says so).
    The learned rounding goes into the weight quantizer (``quantizer.rounding``) and the quantizer
    is frozen, so ``compute_param_encodings`` keeps it. Works per channel and per tensor, 2..8 bits.

    Args:
        sim: a calibrated :class:`~aq_search.QuantSim`; modified in place and returned.
        data_loader: a re-iterable of batches (model inputs only, as for calibration).
        params: an :class:`AdaRoundParams`.
        forward_fn: ``forward_fn(model, batch)`` feeds one batch to the model, for batches that are
            not the model's inputs as they are (it is called once per batch with a stand-in that
            records the model's arguments); default ``model(batch)`` / ``model(*batch)`` / ``model(**batch)``.
        cache: a cache such as :class:`AdaRoundCache`; a layer whose weight, encoding, params, seed
            and cached inputs are all identical to a stored result reuses it without optimizing.
        seed: seeds the sampling of mini-batches (the result is deterministic for a seed);
            ``params.seed``, when set, takes its place.

    Returns:
        ``sim``, with ``sim.model.meta["aq_search"]["adaround"]`` an :class:`AdaRoundReport`.

    Raises:
        EncodingsNotComputedError: the sim has no weight encodings (or, with quantized inputs, no
            activation encodings) yet.
        InvalidInputError: bad arguments or an empty data loader.

    Example:
        >>> import torch
        >>> from aq_search import QuantSim
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
        >>> batches = [torch.randn(8, 3, 8, 8) for _ in range(2)]
        >>> sim = QuantSim(net, batches[0], default_param_bw=4, per_channel=False)
        >>> sim.compute_encodings(batches)
        >>> sim = apply_adaround(sim, batches, AdaRoundParams(num_batches=2, num_iterations=200, learning_rate=1e-2))
        >>> [r.adaround_mse <= r.rtn_mse for r in sim.model.meta["aq_search"]["adaround"].layers]
        [True, True]
    """
    sim = _check_sim(sim, params, seed)
    seed = params.seed if params.seed is not None else seed

    def check(name: str, _: nn.Module) -> str | None:
        q = sim.param_quantizer(name)
        if not q.enabled or q.dtype != "int":
            return "its weight is not quantized to int"
        if q.scale is None:
            raise EncodingsNotComputedError(
                f"apply_adaround needs the weight encodings, but {name!r} has none: call "
                "sim.compute_encodings(batches) (or sim.load_encodings) before apply_adaround."
            )
        return None

    layers, skipped = select_layers(sim, "{kind} weights are not adarounded", check)
    if params.use_quantized_inputs:
        missing = [n for n, q in sim.activation_quantizers.items() if q.enabled and q.dtype == "int" and q.scale is None]
        if missing:
            raise EncodingsNotComputedError(
                f"apply_adaround with use_quantized_inputs needs the activation encodings ({missing[:3]} have none): "
                "call sim.compute_encodings(batches) first."
            )
    inputs = calibration_inputs(data_loader, params.num_batches, forward_fn, "apply_adaround")
    walk = _AdaRoundWalk(sim, layers, params, cache, seed)
    skipped += walk.walk(inputs)
    results = walk.results
    report = AdaRoundReport(tuple(results), tuple(skipped))
    sim.model.meta["aq_search"][META_ADAROUND] = report
    logger.info(
        "AdaRound: %d layer(s) (%d from cache), %d skipped",
        len(results),
        sum(r.cache_hit for r in results),
        len(skipped),
    )
    return sim


def _suggest(ctx: SuggestContext) -> AdaRoundParams:
    """The trial's AdaRound settings (the user's when fixed); the space's iteration count follows the
    search's effort schedule, and every run stops early with the search's patience."""
    if ctx.fixed is not None:
        return ctx.fixed
    beta_high = float(ctx.draw("beta_high"))
    beta_low = float(ctx.draw("beta_low"))
    return AdaRoundParams(
        num_batches=ctx.clamp_batches(ctx.draw("num_batches")),
        num_iterations=ctx.scale_iterations(int(ctx.draw("num_iterations"))),
        early_stop_patience=ctx.early_stop_patience,
        reg_param=float(ctx.draw("reg_param")),
        beta_range=(max(beta_high, beta_low), min(beta_high, beta_low)),
        warm_start=float(ctx.draw("warm_start")),
    )


def _describe(c: AdaRoundParams) -> str:
    stop = ", early stop" if getattr(c, "early_stop_patience", 0) else ""
    seed = f", seed {c.seed}" if c.seed is not None else ""
    return f"adaround(it={c.num_iterations}, reg={c.reg_param:.3g}{stop}{seed})"


register_technique(
    TechniqueSpec(
        key="adaround",
        config_class=AdaRoundParams,
        apply=apply_adaround,
        acts_on="sim",
        description="AdaRound (learned weight rounding)",
        after=("scheme",),
        dimensions=(
            Dimension("num_batches", int, 4, 1, 100_000),
            Dimension("num_iterations", int, 1000, 1, 1_000_000),
            Dimension("reg_param", float, 0.01, 1e-8, 100.0),
            Dimension("beta_high", float, 20.0, 1.0, 1000.0),
            Dimension("beta_low", float, 2.0, 0.01, 1000.0),
            Dimension("warm_start", float, 0.2, 0.0, 0.99),
        ),
        cost="optimizing",
        in_every_space=True,
        suggest=_suggest,
        run_kwargs={"cache": "adaround_cache", "seed": "seed"},
        describe_config=_describe,
    )
)
