"""AMP never returns a model scoring below its input, and stays within a cost budget."""

from __future__ import annotations

import torch
from torch import nn

from aq_search import AdaRoundParams, QuantSim
from aq_search.amp import MixedPrecisionConfig, apply_mixed_precision
from aq_search.techniques import apply_adaround


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, 4)
    ).eval()


def _sim(param_bw: int = 4) -> tuple[QuantSim, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(8, 3, 8, 8, generator=g) for _ in range(2)]
    sim = QuantSim(_net(), data[0], default_param_bw=param_bw, default_output_bw=8)
    sim.compute_encodings(lambda m: [m(x) for x in data])
    return sim, data


def _weight_bits(sim: QuantSim) -> list[int]:
    return [sim.param_quantizer(layer).bitwidth for layer in sim.quantized_layers]


def test_amp_keeps_its_input_with_adaround_when_its_choice_scores_lower() -> None:
    sim, data = _sim(4)
    apply_adaround(sim, data, AdaRoundParams(num_batches=2, num_iterations=5), seed=0)
    rounded = {layer: sim.param_quantizer(layer).rounding for layer in sim.quantized_layers}
    assert all(r is not None for r in rounded.values())
    before = {layer: r.clone() for layer, r in rounded.items() if r is not None}

    def evaluate(model: nn.Module, num_samples: int | None = None) -> float:
        # the input (every weight at 4 bits, with its AdaRound rounding) scores 0.9; any other config 0.5
        return 0.9 if _weight_bits(sim) == [4, 4, 4] else 0.5

    result = apply_mixed_precision(
        sim,
        MixedPrecisionConfig(candidates=("w4a8", "w8a8"), num_samples_for_phase_1=4),
        eval_callback=evaluate,
        allowed_accuracy_drop=0.05,
        fp32_accuracy=1.0,
        progress=False,
        input_accuracy=0.9,
    )
    assert result.accuracy == 0.9 and result.message.startswith("Kept the input")
    assert set(result.config.values()) == {"w4a8"} and result.relative_bops == 0.5
    assert _weight_bits(sim) == [4, 4, 4] and evaluate(sim.model) == 0.9
    for layer, r in before.items():  # AdaRound's rounding is back, exactly
        kept = sim.param_quantizer(layer).rounding
        assert kept is not None and torch.equal(kept, r)
    # without the input's score, AMP returns its own (lower-scoring) choice: the guard is what keeps the input
    sim2, _ = _sim(4)
    plain = apply_mixed_precision(
        sim2,
        MixedPrecisionConfig(candidates=("w4a8", "w8a8"), num_samples_for_phase_1=4),
        eval_callback=lambda m, n=None: 0.9 if _weight_bits(sim2) == [4, 4, 4] else 0.5,
        allowed_accuracy_drop=0.05,
        fp32_accuracy=1.0,
        progress=False,
    )
    assert plain.accuracy == 0.5


def test_amp_never_chooses_a_config_over_the_budget() -> None:
    sim, _ = _sim(4)

    def evaluate(model: nn.Module, num_samples: int | None = None) -> float:
        return 1.0 if min(_weight_bits(sim)) >= 16 else 0.5  # only all-16-bit weights meet the target

    config = MixedPrecisionConfig(candidates=("w4a8", "w16a8"), num_samples_for_phase_1=4)
    result = apply_mixed_precision(
        sim, config, eval_callback=evaluate, allowed_accuracy_drop=0.01, fp32_accuracy=1.0, progress=False, budget=("w4a8", 1.5)
    )
    # all-w16a8 (4x the BOPs of all-w4a8) meets the target but is over budget: never chosen
    assert not result.target_met and result.relative_bops * 4 <= 1.5 + 1e-9
    sim3, _ = _sim(4)
    free = apply_mixed_precision(
        sim3,
        config,
        eval_callback=lambda m, n=None: 1.0 if min(_weight_bits(sim3)) >= 16 else 0.5,
        allowed_accuracy_drop=0.01,
        fp32_accuracy=1.0,
        progress=False,
    )
    assert free.target_met and free.relative_bops == 1.0  # without the budget it would be chosen
