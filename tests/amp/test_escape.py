"""The escape hatch (``lift_precision``): lift the weights of the layer that hurts, in a few evaluations.

The model is built so that one layer's weights need 16 bits: every output channel of ``hurt`` has one
huge weight on an input that is always zero, so per-channel 8-bit rounding flattens the small weights
that carry the signal, while 16 bits keep them. Every other layer quantizes well at 8 bits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from aq_search import AdaRoundParams, QuantSim
from aq_search.amp import MixedPrecisionResult, parse_candidate
from aq_search.amp._escape import is_lift, lift_precision, lifts_pay
from aq_search.techniques import apply_adaround


def _random_weights(*layers: nn.Linear) -> None:
    """Seeded weights scaled by fan-in, zero biases (the same draws on every machine)."""
    g = torch.Generator().manual_seed(0)
    for layer in layers:
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) / layer.in_features**0.5)
        layer.bias.zero_()


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(16, 64)
        self.hurt = nn.Linear(64, 16)
        self.third = nn.Linear(16, 64)
        self.last = nn.Linear(64, 10)
        with torch.no_grad():
            _random_weights(self.first, self.hurt, self.third, self.last)
            self.first.weight[0].zero_()  # feature 0 of `first`'s output is always 0 (relu(0) = 0) ...
            self.hurt.weight[:, 0] = 500.0  # ... and `hurt` weighs it with an outlier that sets its 8-bit scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.first(x))
        x = torch.relu(self.hurt(x))
        x = torch.relu(self.third(x))
        return self.last(x)


def _setup(param_bw: int = 8) -> tuple[nn.Module, QuantSim, list[torch.Tensor], torch.Tensor]:
    torch.manual_seed(0)
    model = _Net().eval()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(32, 16, generator=g) for _ in range(2)]
    x_eval = torch.randn(256, 16, generator=g)
    sim = QuantSim(model, calib[0], default_param_bw=param_bw, default_output_bw=8, per_channel=True)
    sim.compute_encodings(lambda m: [m(x) for x in calib])
    return model, sim, calib, x_eval


def _agreement(model: nn.Module, x_eval: torch.Tensor):
    with torch.no_grad():
        reference = model(x_eval).argmax(1)
    calls: list[int | None] = []

    def evaluate(m: nn.Module, num_samples: int | None = None) -> float:
        calls.append(num_samples)
        n = len(x_eval) if num_samples is None else num_samples
        with torch.no_grad():
            return float((m(x_eval[:n]).argmax(1) == reference[:n]).float().mean())

    return evaluate, calls


def _param_bits(sim: QuantSim) -> dict[str, int]:
    return {layer: sim.param_quantizer(layer).bitwidth for layer in sim.quantized_layers}


def _lift(sim: QuantSim, calib: list[torch.Tensor], evaluate: Callable[..., float], **kwargs: Any) -> MixedPrecisionResult:
    """``lift_precision`` on the test model: candidates w8a8/w16a8, target 0.95, within 1.5x all-w8a8's BOPs."""
    options = {"target_accuracy": 0.95, "budget": ("w8a8", 1.5), **kwargs}
    return lift_precision(sim, ["w8a8", "w16a8"], eval_callback=evaluate, probe_fn=lambda m: m(calib[0]), **options)


def test_lift_raises_the_weights_of_the_layer_that_hurts_within_budget_in_few_evals() -> None:
    model, sim, calib, x_eval = _setup()
    evaluate, calls = _agreement(model, x_eval)
    before = evaluate(sim.model)
    calls.clear()
    assert before < 0.8  # the structural defect: 8-bit weights of `hurt` lose the signal
    result = _lift(sim, calib, evaluate, input_accuracy=before, fp32_accuracy=1.0)
    assert result.target_met and result.accuracy >= 0.95
    assert result.config["hurt"] == "w16a8"
    assert _param_bits(sim)["hurt"] == 16  # applied to the sim
    assert 1 <= len(calls) <= 3 and result.n_eval_calls == len(calls)
    assert result.sensitivity[0].group == "hurt"  # measured as the most harmful, without the eval callback
    # within the budget: at most 1.5x the BOPs of all-w8a8 (relative_bops is relative to all-w16a8 = 2x)
    assert result.relative_bops * 2.0 <= 1.5 + 1e-9


def test_lift_keeps_adaround_rounding_of_layers_it_leaves_alone() -> None:
    model, sim, calib, x_eval = _setup()
    apply_adaround(sim, calib, AdaRoundParams(num_batches=2, num_iterations=5), seed=0)
    rounded = {layer: sim.param_quantizer(layer).rounding for layer in sim.quantized_layers}
    assert all(r is not None for r in rounded.values())
    evaluate, _ = _agreement(model, x_eval)
    result = _lift(sim, calib, evaluate, fp32_accuracy=1.0)
    assert result.config["hurt"] == "w16a8"
    for layer, r in rounded.items():
        kept = sim.param_quantizer(layer).rounding
        if result.config[layer] == "w8a8":
            assert kept is not None and r is not None and torch.equal(kept, r)


def test_lift_never_returns_below_its_input() -> None:
    _, sim, calib, _ = _setup()
    bits0 = _param_bits(sim)

    def evaluate(m: nn.Module, num_samples: int | None = None) -> float:
        return 0.9 if _param_bits(sim) == bits0 else 0.5  # every lift scores lower than the input

    result = _lift(sim, calib, evaluate, input_accuracy=0.9)
    assert result.message.startswith("Kept the input") and result.accuracy == 0.9
    assert _param_bits(sim) == bits0 and set(result.config.values()) == {"w8a8"}


def test_longest_first_spends_one_call_when_even_the_most_precise_config_misses() -> None:
    """``first="longest"`` (AMP before AdaRound): a miss at the most precise config ends the search, and that
    config, the one removing the most noise, is what is handed on; ``"share"`` evaluates a cheaper one first."""
    results = {}
    for first in ("share", "longest"):
        _, sim, calib, _ = _setup()
        calls: list[int | None] = []

        def evaluate(m: nn.Module, num_samples: int | None = None, calls: list[int | None] = calls) -> float:
            calls.append(num_samples)
            return 0.5  # every config misses the 0.95 target

        results[first] = (_lift(sim, calib, evaluate, first=first), len(calls))
    (share, share_calls), (longest, longest_calls) = results["share"], results["longest"]
    assert longest_calls == 1 and longest.n_eval_calls == 1 and not longest.target_met
    assert share_calls in (1, 2)  # the share prefix, then the longest when that is a longer one
    assert longest.relative_bops >= share.relative_bops
    assert longest.config["hurt"] == "w16a8"


def test_longest_first_spends_one_call_when_the_most_precise_config_meets() -> None:
    """A met target within the budget ends it: no more calls for a cheaper config (AdaRound would follow)."""
    model, sim, calib, x_eval = _setup()
    evaluate, calls = _agreement(model, x_eval)
    result = _lift(sim, calib, evaluate, first="longest", fp32_accuracy=1.0)
    assert result.target_met and result.config["hurt"] == "w16a8"
    assert len(calls) == 1 and result.n_eval_calls == 1
    assert result.relative_bops * 2.0 <= 1.5 + 1e-9


class _CancellingNet(nn.Module):
    """Three parallel paths whose weight-rounding errors partly cancel: ``a`` and ``b`` have the same
    weights, ``c`` 1.2x them, and the output is ``a(x) + b(x) - c(x)``. With per-tensor min-max ranges the
    rounding error scales with the weights, so the output error is ``(1 + 1 - 1.2) e = 0.8 e``. Lifting
    ``a`` alone leaves ``-0.2 e`` (less noise), so does ``b`` alone; lifting both leaves ``-1.2 e``: more
    noise than the input. The 16-bit activations make weight rounding the only noise that matters."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 8)
        self.b = nn.Linear(16, 8)
        self.c = nn.Linear(16, 8)
        with torch.no_grad():
            _random_weights(self.a)
            self.b.weight.copy_(self.a.weight)
            self.c.weight.copy_(1.2 * self.a.weight)
            self.b.bias.zero_()
            self.c.bias.zero_()
        self.ra, self.rb, self.rc = nn.ReLU(), nn.ReLU(), nn.ReLU()  # one input quantizer per path: three groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(self.ra(x)) + self.b(self.rb(x)) - self.c(self.rc(x))


def test_lifts_that_add_noise_together_are_not_combined() -> None:
    torch.manual_seed(0)
    model = _CancellingNet().eval()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(32, 16, generator=g) for _ in range(2)]
    sim = QuantSim(model, calib[0], default_param_bw=4, default_output_bw=16, per_channel=False)
    sim.compute_encodings(lambda m: [m(x) for x in calib])
    from aq_search.amp._escape import _noise_ratio

    input_noise = _noise_ratio(*_float_and_sim_outputs(model, sim, calib[0]))  # before any lift

    def evaluate(m: nn.Module, num_samples: int | None = None) -> float:
        return 0.5  # a miss: the longest prefix is what is handed on

    result = lift_precision(
        sim,
        ["w4a16", "w8a16"],
        eval_callback=evaluate,
        target_accuracy=0.95,
        probe_fn=lambda m: m(calib[0]),
        budget=("w4a16", 2.0),
        first="longest",
    )
    bits = _param_bits(sim)
    alone = {e.group: e for e in result.sensitivity}
    assert alone["a"].sensitivity > 0 and alone["b"].sensitivity > 0  # each lift alone removes noise
    assert sorted(bits[k] for k in ("a", "b")) == [4, 8]  # but only one of the two is lifted
    assert bits["c"] == 4  # lifting c alone adds noise (e = 2e): never a move
    final = _noise_ratio(*_float_and_sim_outputs(model, sim, calib[0]))
    assert final < 0.5 * input_noise


def _float_and_sim_outputs(model: nn.Module, sim: QuantSim, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    with torch.no_grad():
        return [model(x)], [sim.model(x)]


def test_lift_rejects_an_unknown_first() -> None:
    from aq_search._errors import InvalidInputError

    _, sim, calib, _ = _setup()
    with pytest.raises(InvalidInputError, match="'first' parameter of lift_precision must be 'share' or 'longest'"):
        _lift(sim, calib, lambda m, n=None: 1.0, first="cheapest")


def test_lifts_pay_only_when_the_all_highest_config_is_over_the_budget() -> None:
    _, sim, _, _ = _setup()
    assert lifts_pay(sim, ["w8a8", "w16a8"], ("w8a8", 1.5), "bops")  # all-w16a8 = 2x > 1.5x
    assert not lifts_pay(sim, ["w8a8", "w16a8"], ("w8a8", 2.0), "bops")  # all-highest fits: top-down AMP
    assert not lifts_pay(sim, ["w8a8", "w16a8"], None, "bops")
    assert is_lift(parse_candidate("w16a8"), parse_candidate("w8a8"))
    assert not is_lift(parse_candidate("w4a16"), parse_candidate("w8a8"))


@pytest.mark.parametrize("max_evals", [0, -1])
def test_lift_rejects_a_bad_max_evals(max_evals: int) -> None:
    from aq_search._errors import InvalidInputError

    model, sim, calib, x_eval = _setup()
    evaluate, _ = _agreement(model, x_eval)
    with pytest.raises(InvalidInputError, match="max_evals"):
        _lift(sim, calib, evaluate, target_accuracy=0.9, budget=None, max_evals=max_evals)


class _DecoyNet(nn.Module):
    """``hurt`` needs 16-bit weights (as in ``_Net``); ``decoy`` looks worse by weight noise but its output
    is never used (``gate`` has zero weights), so the free estimate ranks it first and only an output probe
    tells them apart."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(16, 64)
        self.hurt = nn.Linear(64, 16)
        self.decoy = nn.Linear(10, 4)
        self.last = nn.Linear(16, 10)
        self.gate = nn.Linear(4, 10)
        with torch.no_grad():
            _random_weights(self.first, self.hurt, self.decoy, self.last, self.gate)
            self.first.weight[0].zero_()
            self.hurt.weight[:, 0] = 500.0  # 8 bits flatten the small weights: noise 1/500^2 of the power ...
            self.decoy.weight[:, 0] = 20.0  # ... the decoy's far more, at a fraction of the cost: harmless
            self.gate.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.first(x))
        y = self.last(torch.relu(self.hurt(h)))
        return y + self.gate(torch.relu(self.decoy(y)))


def test_lift_measures_every_lift_by_default_not_only_the_free_estimates_best() -> None:
    torch.manual_seed(0)
    model = _DecoyNet().eval()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(32, 16, generator=g) for _ in range(2)]
    x_eval = torch.randn(256, 16, generator=g)
    results = {}
    for screen in (1, None):
        sim = QuantSim(model, calib[0], default_param_bw=8, default_output_bw=8, per_channel=True)
        sim.compute_encodings(lambda m: [m(x) for x in calib])
        evaluate, _ = _agreement(model, x_eval)
        results[screen] = (_lift(sim, calib, evaluate, screen=screen), _param_bits(sim))
    one, one_bits = results[1]
    assert [e.group for e in one.sensitivity] == ["decoy"]  # the free estimate's best: the decoy
    assert one_bits["hurt"] == 8 and not one.target_met
    every, every_bits = results[None]
    assert {"hurt", "decoy"} <= {e.group for e in every.sensitivity}
    assert every_bits["hurt"] == 16 and every.target_met
    assert every_bits["decoy"] == 8  # measured: lifting it removes no output noise
