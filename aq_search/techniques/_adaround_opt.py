"""AdaRound's parameters, results and the per-layer optimization: the rectified-sigmoid soft weight, the
window sampler over cached inputs and the hand-written gradient loop (:func:`_optimize`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._constraints import Boolean, Constraint, Interval, NoneValue, Pair
from .._numerics import channel_shape
from ..quantsim import FakeQuantizer
from ._adaround_stop import EarlyStop, check_interval
from ._config import TechniqueConfig
from ._graph import CONV_TRANSPOSES, CONVS, bias_of

logger = logging.getLogger(__name__)

META_ADAROUND = "adaround"
_VERSION = "aq_search.adaround/1"
_ZETA = 1.1
_GAMMA = -0.1


@dataclasses.dataclass(frozen=True)
class AdaRoundParams(TechniqueConfig):
    """Settings of :func:`apply_adaround` (the names and defaults of AIMET's ``AdaroundParameters``).

    Args:
        num_batches: calibration batches whose layer inputs are cached and optimized on.
        num_iterations: optimizer steps per layer.
        reg_param: weight of the rounding regularizer relative to the reconstruction loss.
        beta_range: ``(start, end)`` of the regularizer's temperature, annealed linearly after the warm start.
        warm_start: fraction of the iterations without the regularizer, in ``[0, 1)``.
        use_quantized_inputs: optimize each layer on its inputs in the quantized model (preceding layers
            already rounded, activations quantized), so that it also compensates the error of the layers
            before it, against the FP32 output (as AIMET does). False: on the FP32 inputs. On
            EfficientNet-Lite0 at W4A8 per-channel (500 iterations) this is the difference between
            top-1 0.85 and 0.40 (round-to-nearest 0.10, FP32 0.90). Both inputs are cached.
        learning_rate: Adam's learning rate for the rounding variables. ``None`` (the default): it follows
            the iteration count, ``max(1e-3, 1 / num_iterations)`` (see :func:`adaround_learning_rate`):
            AIMET's 1e-3 from 1,000 iterations up, more for a shorter run.
        batch_size: samples per iteration: output positions for a convolution, rows for a Linear
            layer (drawn at random from the cached data).
        early_stop_patience: stop a layer's optimization after this many checks (about 40 per run,
            after the warm start) in which the reconstruction loss of the hard rounding did not improve;
            the best hard rounding seen is returned. 0 (AIMET's behaviour): run every iteration.
        seed: seeds the draws of mini-batches; ``None`` (the default): :func:`apply_adaround`'s ``seed``
            argument (in a search, the study's seed). A search sets it to redraw a near miss (another
            draw of the same AdaRound, see ``aq_search/search/_redraw.py``).
    """

    technique: ClassVar[str] = "adaround"

    num_batches: int
    num_iterations: int = 10000
    reg_param: float = 0.01
    beta_range: tuple[float, float] = (20.0, 2.0)
    warm_start: float = 0.2
    use_quantized_inputs: bool = True
    learning_rate: float | None = None
    batch_size: int = 1024
    early_stop_patience: int = 0
    seed: int | None = None

    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "num_batches": [Interval(int, 1, None)],
        "num_iterations": [Interval(int, 1, None)],
        "reg_param": [Interval(float, 0.0, None, "neither")],
        "beta_range": [Pair(Interval(float, 0.0, None, "neither"), "descending", "(20, 2)", "positive numbers")],
        "warm_start": [Interval(float, 0.0, 1.0, "left")],
        "use_quantized_inputs": [Boolean()],
        "learning_rate": [Interval(float, 0.0, 1.0, "right"), NoneValue()],
        "batch_size": [Interval(int, 1, None)],
        "early_stop_patience": [Interval(int, 0, None)],
        "seed": [Interval(int, 0, None), NoneValue()],
    }


#: AIMET's learning rate (``AdaroundParameters``), the floor of :func:`adaround_learning_rate`.
AIMET_LEARNING_RATE = 1e-3


def adaround_learning_rate(params: AdaRoundParams) -> float:
    """The learning rate a run uses: the configured one, else ``max(1e-3, 1 / num_iterations)``.

    Adam moves each rounding variable by about the learning rate per step, and a weight's rounding flips
    only when its variable travels by about 1 (the soft rounding is a stretched sigmoid of it). AIMET's
    1e-3 allows that over its 10,000 iterations, but over 30 only the near-ties between two grid points can
    flip, so a short run gets a rate that lets its variables travel about as far (at least 1 in all).
    Measured on EfficientNet-Lite0 W4A8 per-channel (30 iterations after AMP, top-1 agreement with FP32 on
    128 images, one run each): 0.898 at 1e-3; 0.930 at 1e-2, 0.961 at 3e-2, 0.930 at 1/30 (this rule) and
    at 0.1; 300 iterations at 1e-3 gave 0.938.
    """
    if params.learning_rate is not None:
        return float(params.learning_rate)
    return max(AIMET_LEARNING_RATE, 1.0 / params.num_iterations)


@dataclasses.dataclass(frozen=True)
class AdaRoundLayerResult:
    """One layer's outcome. The errors are the mean squared error of the layer's output (after its
    fused activation) against the FP32 output, over the cached inputs: with round-to-nearest
    weights and with the learned rounding. When the learned rounding is the worse of the two, the
    layer keeps round-to-nearest (``kept_nearest``)."""

    name: str
    rtn_mse: float
    adaround_mse: float
    cache_hit: bool
    seconds: float
    kept_nearest: bool = False


@dataclasses.dataclass(frozen=True)
class AdaRoundReport:
    """What :func:`apply_adaround` did, per layer in execution order; in ``sim.model.meta["aq_search"]["adaround"]``."""

    layers: tuple[AdaRoundLayerResult, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()

    def result(self, name: str) -> AdaRoundLayerResult:
        for r in self.layers:
            if r.name == name:
                return r
        raise KeyError(name)


# -- the optimization --------------------------------------------------------------------------------
def _functional(module: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    """The layer's forward with another weight."""
    bias = bias_of(module)
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, bias)
    if isinstance(module, CONVS):
        return module._conv_forward(x, weight, bias)  # type: ignore[operator]
    assert isinstance(module, CONV_TRANSPOSES)
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[weight.dim() - 2]
    return fn(x, weight, bias, module.stride, module.padding, module.output_padding, module.groups, module.dilation)  # type: ignore[arg-type]


def _activate(y: Tensor, clamp: tuple[float, float] | None) -> Tensor:
    if clamp is None:
        return y
    lo, hi = clamp
    if hi == math.inf:
        return torch.clamp(y, min=lo)
    return torch.clamp(y, lo, hi)


@dataclasses.dataclass
class _Grid:
    """The weight's quantization grid, broadcast to the weight's shape."""

    scale: Tensor
    zero_point: Tensor
    qmin: int
    qmax: int

    def rtn(self, w: Tensor) -> Tensor:
        q = torch.clamp(torch.round(w / self.scale) + self.zero_point, self.qmin, self.qmax)
        return (q - self.zero_point) * self.scale

    def rounded(self, w: Tensor, rounding: Tensor) -> Tensor:
        q = torch.clamp(torch.floor(w / self.scale) + rounding + self.zero_point, self.qmin, self.qmax)
        return (q - self.zero_point) * self.scale


def _grid(quantizer: FakeQuantizer, weight_shape: torch.Size) -> _Grid:
    assert quantizer.scale is not None and quantizer.zero_point is not None
    shape = channel_shape(len(weight_shape), quantizer.axis)
    scale = quantizer.scale.reshape(shape).expand(weight_shape).contiguous()
    zp = quantizer.zero_point.float().reshape(shape).expand(weight_shape).contiguous()
    qmin, qmax = quantizer.quant_range
    return _Grid(scale, zp, qmin, qmax)


def _beta(it: int, params: AdaRoundParams) -> float:
    """The regularizer's temperature: ``beta_range[0]`` until the warm start ends, then linear to ``beta_range[1]``."""
    start = params.warm_start * params.num_iterations
    b0, b1 = params.beta_range
    rel = (it - start) / max(1.0, params.num_iterations - start)
    return b1 + (b0 - b1) * max(0.0, 1.0 - rel)


class _FusedAdam:
    """``torch.optim.Adam([param], lr=lr, fused=True)`` for one tensor: its state and its ``step()``, the same
    kernel call (``torch._fused_adam_``) on the same values, so the same results bit for bit. Not through
    ``torch.optim``, whose first ``add_param_group`` and ``step`` import ``torch._dynamo`` (about two seconds
    of a search's wall time on a CPU, for a graph-break marker the hand-written loop does not need)."""

    def __init__(self, param: Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.param, self.lr, self.betas, self.eps = param, float(lr), betas, eps
        self.exp_avg = torch.zeros_like(param, memory_format=torch.preserve_format)
        self.exp_avg_sq = torch.zeros_like(param, memory_format=torch.preserve_format)
        self.steps = torch.zeros((), dtype=torch.float32, device=param.device)  # fused Adam counts in float32

    def step(self) -> None:
        grad = self.param.grad
        if grad is None:
            return
        with torch.no_grad():
            torch._foreach_add_([self.steps], 1)
            torch._fused_adam_(
                [self.param],
                [grad],
                [self.exp_avg],
                [self.exp_avg_sq],
                [],
                [self.steps],
                amsgrad=False,
                lr=self.lr,
                beta1=self.betas[0],
                beta2=self.betas[1],
                weight_decay=0.0,
                eps=self.eps,
                maximize=False,
                grad_scale=None,
                found_inf=None,
            )


class _SoftWeight:
    """``w_soft = s * (clamp(floor(w/s) + h(V) + zp, qmin, qmax) - zp)`` with its gradient, computed by hand.

    ``h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)`` is the rectified sigmoid; ``V`` starts
    where ``h(V)`` equals the fractional part of ``w / s`` (the soft weight then equals the float
    weight). Weights whose floor already lies outside the grid do not depend on ``V``.
    """

    def __init__(self, w: Tensor, grid: _Grid, lr: float) -> None:
        s, zp = grid.scale, grid.zero_point
        ratio = w / s
        floor = torch.floor(ratio)
        c = floor + zp
        frozen = (c < grid.qmin) | (c >= grid.qmax)
        self.base = (torch.where(frozen, c.clamp(grid.qmin, grid.qmax), c) - zp) * s
        # d w_soft / d h: the scale, zero where the weight is stuck at the end of the grid
        self.slope = s.masked_fill(frozen, 0.0) if bool(frozen.any()) else s
        frac = (ratio - floor).clamp(0.0, 1.0)
        self.v = (-torch.log((_ZETA - _GAMMA) / (frac - _GAMMA) - 1.0)).requires_grad_(True)
        self.optimizer = _FusedAdam(self.v, lr)
        self._sig = torch.empty_like(w)
        self.h = torch.empty_like(w)

    def weight(self) -> Tensor:
        with torch.no_grad():
            torch.sigmoid(self.v, out=self._sig)
            torch.mul(self._sig, _ZETA - _GAMMA, out=self.h)
            self.h.add_(_GAMMA).clamp_(0.0, 1.0)
            return torch.addcmul(self.base, self.h, self.slope)

    def step(self, grad_w: Tensor, reg_param: float, beta: float | None) -> None:
        """One Adam step on V, given the gradient of the reconstruction loss w.r.t. the soft weight."""
        with torch.no_grad():
            g = grad_w.mul_(self.slope)
            if beta is not None:
                # d/dh reg (1 - |2h - 1|^beta) = -2 reg beta (2h - 1) |2h - 1|^(beta - 2); the power as
                # exp(log), clamped inside float32's normal range (denormals are very slow on CPU).
                a = torch.mul(self.h, 2.0).sub_(1.0)
                p = a.abs().clamp_min_(1e-30).log_().mul_(beta - 2.0).clamp_(-80.0, 80.0).exp_()
                g.addcmul_(a, p, value=-2.0 * reg_param * beta)
            sig = self._sig
            # dh/dV = (zeta - gamma) sig (1 - sig), zero where the rectification clamps h to 0 or 1
            dh = torch.addcmul(sig, sig, sig, value=-1.0).mul_(_ZETA - _GAMMA)
            dh.masked_fill_((self.h <= 0.0) | (self.h >= 1.0), 0.0)
            assert g.is_contiguous()  # the fused Adam kernel walks param and grad memory in the same order
            self.v.grad = g.mul_(dh)
        self.optimizer.step()

    def hard(self) -> Tensor:
        """The learned rounding: 1 where ``h(V) >= 0.5`` (i.e. ``V >= 0``)."""
        return (self.v.detach() >= 0).to(torch.uint8)


class _Sampler:
    """Mini-batches of cached (input, target) pairs for one layer, with the layer's forward and weight gradient.

    Linear: random rows. Conv (non-transposed): random windows of about ``batch_size`` output
    positions (whole images when they are smaller), cut from the zero-padded cached input, so each
    step is one native convolution plus its weight gradient. ConvTranspose: random whole images.
    """

    def __init__(
        self, module: nn.Module, weight_shape: torch.Size, x: Tensor, target: Tensor, batch_size: int, generator: torch.Generator
    ) -> None:
        self.module = module
        self.gen = generator
        self.batch_size = batch_size
        self.linear = isinstance(module, nn.Linear)
        if self.linear:
            self.x = x.reshape(-1, x.shape[-1])
            self.t = target.reshape(-1, target.shape[-1])
            return
        self.transposed = isinstance(module, CONV_TRANSPOSES)
        dims = x.dim() - 2
        self.stride = list(module.stride)  # type: ignore[arg-type]
        self.dilation = list(module.dilation)  # type: ignore[arg-type]
        self.groups = int(module.groups)  # type: ignore[arg-type]
        self.output_padding = list(getattr(module, "output_padding", [0] * dims))
        self.out_size = list(target.shape[2:])
        self.kernel = list(weight_shape[2:])
        per_image = math.prod(self.out_size)
        self.window: list[int] | None = None
        if self.transposed or per_image <= batch_size:
            self.images = min(x.shape[0], max(1, math.ceil(batch_size / per_image)))
        else:
            self.images = min(x.shape[0], 4)
            side = (batch_size / self.images) ** (1.0 / dims)
            self.window = [max(1, min(o, round(side))) for o in self.out_size]
        # Zero padding of a window is cut on the fly from the cached input (no padded copy of it)
        self.pad = [0] * dims if self.transposed else [int(p) for p in module.padding]  # type: ignore[union-attr]
        self.padding = list(module.padding) if self.transposed else [0] * dims  # type: ignore[arg-type]
        if self.window is not None and str(getattr(module, "padding_mode", "zeros")) == "zeros":
            self.x, self.t = x, target  # windows: no copy of the (large) cached input or target
            return
        if any(self.pad):
            spec = [p for d in reversed(self.pad) for p in (d, d)]
            mode = str(module.padding_mode)
            x = F.pad(x, spec) if mode == "zeros" else F.pad(x, spec, mode=mode)
            self.pad = [0] * dims
        if x.dim() == 4:  # channels-last: faster convolutions, much faster depthwise weight gradients
            x, target = x.contiguous(memory_format=torch.channels_last), target.contiguous(memory_format=torch.channels_last)
        self.x, self.t = x, target

    def sample(self) -> tuple[Tensor, Tensor]:
        if self.linear:
            idx = torch.randint(self.x.shape[0], (min(self.batch_size, self.x.shape[0]),), generator=self.gen)
            return self.x.index_select(0, idx), self.t.index_select(0, idx)
        idx = torch.randint(self.x.shape[0], (self.images,), generator=self.gen)
        if self.window is None:
            xb, tb = self.x[idx], self.t[idx]  # advanced indexing keeps channels-last (index_select does not)
            if xb.dim() == 4:
                xb, tb = xb.contiguous(memory_format=torch.channels_last), tb.contiguous(memory_format=torch.channels_last)
            return xb, tb
        xs, ts = [], []
        for n in idx.tolist():
            starts = [
                int(torch.randint(o - w + 1, (1,), generator=self.gen)) for o, w in zip(self.out_size, self.window, strict=True)
            ]
            t_sl = tuple(slice(s, s + w) for s, w in zip(starts, self.window, strict=True))
            x_sl = tuple(
                slice(s * st, (s + w - 1) * st + d * (k - 1) + 1)
                for s, w, st, d, k in zip(starts, self.window, self.stride, self.dilation, self.kernel, strict=True)
            )
            xs.append(self._window(n, x_sl))
            ts.append(self.t[(n, slice(None), *t_sl)])
        xb, tb = torch.stack(xs), torch.stack(ts)
        if xb.dim() == 4:
            xb, tb = xb.contiguous(memory_format=torch.channels_last), tb.contiguous(memory_format=torch.channels_last)
        return xb, tb

    def _window(self, n: int, x_sl: tuple[slice, ...]) -> Tensor:
        """Image ``n``'s window ``x_sl`` of the zero-padded input (``self.pad`` each side), cut from the unpadded one."""
        if not any(self.pad):
            whole: tuple[Any, ...] = (n, slice(None), *x_sl)
            return self.x[whole]
        inner: list[slice] = []
        spec: list[tuple[int, int]] = []
        for sl, p, size in zip(x_sl, self.pad, self.x.shape[2:], strict=True):
            a, b = sl.start - p, sl.stop - p
            lo = min(max(a, 0), size)
            hi = max(min(b, size), lo)
            inner.append(slice(lo, hi))
            spec.append((lo - a, b - hi))
        flat = [q for before_after in reversed(spec) for q in before_after]
        cut: tuple[Any, ...] = (n, slice(None), *inner)
        return F.pad(self.x[cut], flat)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        bias = bias_of(self.module)
        if self.linear:
            return F.linear(x, w, bias)
        return torch.ops.aten.convolution(
            x, w, bias, self.stride, self.padding, self.dilation, self.transposed, self.output_padding, self.groups
        )

    def weight_grad(self, grad_out: Tensor, x: Tensor, w: Tensor) -> Tensor:
        if self.linear:
            return grad_out.t() @ x
        return torch.ops.aten.convolution_backward(
            grad_out,
            x,
            w,
            None,
            self.stride,
            self.padding,
            self.dilation,
            self.transposed,
            self.output_padding,
            self.groups,
            [False, True, False],
        )[1].contiguous()  # channels-last input gives a channels-last gradient; V and Adam's state are contiguous


def _optimize(
    module: nn.Module,
    w: Tensor,
    x: Tensor,
    target: Tensor,
    quantizer: FakeQuantizer,
    clamp: tuple[float, float] | None,
    params: AdaRoundParams,
    seed: int,
) -> Tensor:
    """Learn the rounding of the float weight ``w``; returns a 0/1 uint8 tensor of the weight's shape.

    Loss (as in the paper and AIMET): squared error summed over output channels and averaged over
    samples, plus ``reg_param * sum(1 - |2 h(V) - 1|^beta)`` after the warm start.
    """
    gen = torch.Generator().manual_seed(seed)
    soft = _SoftWeight(w.detach(), _grid(quantizer, w.shape), adaround_learning_rate(params))
    sampler = _Sampler(module, w.shape, x, target, params.batch_size, gen)
    warm = int(params.warm_start * params.num_iterations)
    lo, hi = clamp if clamp is not None else (-math.inf, math.inf)
    channel_dim = -1 if sampler.linear else 1
    stop: EarlyStop | None = None
    interval = check_interval(params.num_iterations)
    if params.early_stop_patience:
        probe = _Sampler(module, w.shape, x, target, params.batch_size * 4, torch.Generator().manual_seed(seed + 1))
        xc, tc = probe.sample()

        def loss_of(hard: Tensor) -> float:
            w_hard = torch.addcmul(soft.base, hard.to(soft.base.dtype), soft.slope)
            return float((_activate(probe.forward(xc, w_hard), clamp) - tc).pow(2).mean())

        stop = EarlyStop(loss_of, params.early_stop_patience)
    with torch.no_grad():
        for it in range(params.num_iterations):
            xb, tb = sampler.sample()
            w_soft = soft.weight()
            y = sampler.forward(xb, w_soft)
            out = _activate(y, clamp)
            samples = out.numel() // out.shape[channel_dim]
            grad = (out - tb).mul_(2.0 / samples)
            if clamp is not None:  # no gradient where the fused activation clips
                grad.masked_fill_(y <= lo if hi == math.inf else (y <= lo) | (y >= hi), 0.0)
            grad_w = sampler.weight_grad(grad, xb, w_soft)
            soft.step(grad_w, params.reg_param, _beta(it, params) if it >= warm else None)
            if stop is not None and it >= warm and (it + 1) % interval == 0 and stop.check(soft.hard()):
                logger.debug("AdaRound: stopped after %d of %d iterations (no improvement)", it + 1, params.num_iterations)
                break
        return stop.result(soft.hard()) if stop is not None else soft.hard()
