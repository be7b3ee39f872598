"""Module taxonomy of prepared models: which layers carry weights, pass values through, fuse, or are known."""

from __future__ import annotations

from torch import nn

from . import _ops

__all__ = [
    "AVG_POOLS",
    "BATCHNORMS",
    "CONVS",
    "ELEMENTWISE_ACTIVATIONS",
    "FUSABLE_ACTIVATIONS",
    "FUSABLE_PRODUCERS",
    "KNOWN_LEAVES",
    "PASSTHROUGH_LAYERS",
    "WEIGHT_LAYERS",
]

# -- module taxonomy ----------------------------------------------------------------------------------
CONVS: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (*CONVS, nn.Linear, nn.Embedding)
#: Ops whose output has the same values (or a subset) as their input: no quantizer needed.
PASSTHROUGH_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Flatten,
    nn.Unflatten,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ReflectionPad1d,
    nn.ReflectionPad2d,
    nn.ReplicationPad1d,
    nn.ReplicationPad2d,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.ChannelShuffle,
    _ops.Pad,
)
#: Activations a preceding layer's output quantizer is fused with (only the activation's output is quantized).
FUSABLE_ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
#: Layers whose output quantizer is fused into a following BatchNorm / ReLU.
BATCHNORMS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
FUSABLE_PRODUCERS: tuple[type[nn.Module], ...] = (*CONVS, nn.Linear, *BATCHNORMS, _ops.Add)
#: Average pools: they act on each channel alone (CLE looks through them).
AVG_POOLS: tuple[type[nn.Module], ...] = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
#: Element-wise activations without parameters.
ELEMENTWISE_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.LeakyReLU,
)
KNOWN_LEAVES: tuple[type[nn.Module], ...] = (
    WEIGHT_LAYERS
    + PASSTHROUGH_LAYERS
    + BATCHNORMS
    + ELEMENTWISE_ACTIVATIONS
    + (
        nn.PReLU,
        nn.ELU,
        nn.Softplus,
        nn.Mish,
        nn.Softmax,
        nn.LogSoftmax,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.InstanceNorm1d,
        nn.InstanceNorm2d,
        *AVG_POOLS,
        nn.Upsample,
        nn.UpsamplingNearest2d,
        nn.UpsamplingBilinear2d,
        _ops.Add,
        _ops.Sub,
        _ops.Mul,
        _ops.Div,
        _ops.MatMul,
        _ops.Concat,
        _ops.Mean,
        _ops.FunctionalOp,
    )
)
