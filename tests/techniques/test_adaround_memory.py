"""AdaRound's memory: each layer's cached inputs are held once, and windows are cut without copying them.

Structural checks on a tiny conv net (no timing, no model trained here): the per-batch activations the
graph stepping keeps and the concatenation AdaRound optimizes on share one storage, and the window
sampler of a padded convolution reads the cached input as it is (no padded, channels-last copy),
giving exactly the windows of the padded input.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aq_search import QuantSim
from aq_search.techniques import AdaRoundParams, apply_adaround
from aq_search.techniques import _adaround as adaround_module
from aq_search.techniques._adaround_opt import _Sampler


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.act = nn.ReLU6()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pw(self.dw(self.act(self.c1(x))))


def _storage(t: Tensor) -> int:
    return t.untyped_storage().data_ptr()


def test_each_layers_inputs_are_held_once(monkeypatch: pytest.MonkeyPatch, aq_seed: int) -> None:
    """At every layer, the stepped per-batch inputs (FP32 and quantized) are views of the tensors AdaRound gets."""
    gen = torch.Generator().manual_seed(aq_seed)
    net = _Net().eval()
    batches = [torch.randn(4, 3, 24, 24, generator=gen) for _ in range(3)]
    sim = QuantSim(net, batches[0], default_param_bw=4, default_output_bw=8, per_channel=True)
    sim.compute_encodings(batches)
    seen: list[str] = []
    original_visit = adaround_module._AdaRoundWalk.visit

    def visit(walk: Any, node: Any, name: str) -> None:
        inner = adaround_module._adaround_layer

        def layer(sim_: QuantSim, name_: str, x_fp: Tensor, x_opt: Tensor, *args: Any) -> Any:
            arg = node.args[0]
            for stepper, x in ((walk.stepper, x_fp), (walk.quant, x_opt)):
                held = [interp.env[arg] for interp in stepper.interpreters]
                assert {_storage(h) for h in held} == {_storage(x)}, f"{name_}: the batches' inputs are held twice"
                assert torch.equal(torch.cat(held), x)
            assert _storage(x_fp) != _storage(x_opt)  # quantized inputs are their own tensor
            seen.append(name_)
            return inner(sim_, name_, x_fp, x_opt, *args)

        monkeypatch.setattr(adaround_module, "_adaround_layer", layer)
        try:
            original_visit(walk, node, name)
        finally:
            monkeypatch.setattr(adaround_module, "_adaround_layer", inner)

    monkeypatch.setattr(adaround_module._AdaRoundWalk, "visit", visit)
    apply_adaround(sim, batches, AdaRoundParams(num_batches=3, num_iterations=5, batch_size=64), seed=aq_seed)
    assert seen == ["c1", "dw", "pw"]


@pytest.mark.parametrize(
    ("conv", "size"),
    [
        (nn.Conv2d(3, 4, 3, stride=2, padding=1), 20),
        (nn.Conv2d(4, 4, 3, padding=1, groups=4), 17),
        (nn.Conv2d(4, 2, 3, padding=2, dilation=2), 16),
        (nn.Conv2d(4, 3, (5, 3), stride=(2, 1), padding=(2, 1)), 18),
        (nn.Conv1d(4, 3, 5, padding=4), 40),
    ],
)
def test_padded_windows_are_cut_from_the_cached_input(conv: nn.Module, size: int, aq_seed: int) -> None:
    """No copy of the cached input or target; every window equals the same window of the zero-padded input."""
    gen = torch.Generator().manual_seed(aq_seed)
    dims = conv.weight.dim() - 2
    x = torch.randn(3, conv.in_channels, *([size] * dims), generator=gen)
    with torch.no_grad():
        target = conv(x)
    sampler = _Sampler(conv, conv.weight.shape, x, target, 16, torch.Generator().manual_seed(aq_seed))
    assert sampler.window is not None
    assert _storage(sampler.x) == _storage(x) and _storage(sampler.t) == _storage(target)
    spec = [p for d in reversed(conv.padding) for p in (d, d)]
    padded = F.pad(x, spec)
    window = sampler.window
    out_size = list(target.shape[2:])
    for n in range(x.shape[0]):
        for corner in ([0] * dims, [o - w for o, w in zip(out_size, window, strict=True)], [1] * dims):
            x_sl = tuple(
                slice(s * st, (s + w - 1) * st + d * (k - 1) + 1)
                for s, w, st, d, k in zip(corner, window, conv.stride, conv.dilation, conv.kernel_size, strict=True)
            )
            assert torch.equal(sampler._window(n, x_sl), padded[(n, slice(None), *x_sl)])
    xb, tb = sampler.sample()
    with torch.no_grad():
        assert torch.allclose(sampler.forward(xb, conv.weight), tb, atol=1e-5)


def test_gathered_batches_are_freed(aq_seed: int) -> None:
    """After gathering a layer's inputs, the stepped per-batch tensors are gone (only views of the whole remain)."""
    import weakref

    from aq_search.techniques._running import GraphStepper

    gen = torch.Generator().manual_seed(aq_seed)
    net = _Net().eval()
    sim = QuantSim(net, torch.randn(1, 3, 12, 12, generator=gen), default_param_bw=8, default_output_bw=8)
    batches = [torch.randn(2, 3, 12, 12, generator=gen) for _ in range(3)]
    sim.compute_encodings(batches)
    gm = sim.model
    inputs: list[tuple[tuple[Any, ...], dict[str, Any]]] = [((b,), {}) for b in batches]
    stepper = GraphStepper(gm, inputs)
    target = next(n for n in gm.graph.nodes if n.op == "call_module" and str(n.target) == "dw")
    with torch.no_grad():
        for node in gm.graph.nodes:
            if node is target:
                break
            stepper.step(node)
        refs = [weakref.ref(t) for t in stepper.first_input(target)]
        expected = torch.cat(stepper.first_input(target))
        whole = stepper.gather_first_input(target)
    assert torch.equal(whole, expected)
    assert all(r() is None for r in refs), "a batch's own tensor is still alive next to the concatenation"
