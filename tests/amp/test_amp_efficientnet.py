"""AMP on EfficientNet-Lite0 with ImageNet weights (slow: about a minute or two on one CPU thread)."""

from __future__ import annotations

import time

import pytest
import torch

from aq_search import QuantSim
from aq_search.amp import choose_mixed_precision, find_quantizer_groups
from aq_search.examples import imagenet

from .conftest import fold_all_batch_norms

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not imagenet.is_available(), reason=f"needs {', '.join(imagenet.REQUIREMENTS)}")
def test_efficientnet_lite0_w4a8() -> None:
    model = imagenet.load_efficientnet_lite0()
    x, y = imagenet.imagenet_images()
    folded = fold_all_batch_norms(model, x[:1])
    calibration = imagenet.augmented_images(16, seed=1)
    images = torch.cat([x, imagenet.augmented_images(12, seed=2)])  # 32 images, the first 20 labelled
    reference = imagenet.predict(folded, images)
    assert imagenet.top1(reference[:20], y) >= 0.85

    def agreement(model: torch.nn.Module, num_samples: int | None = None) -> float:
        """Top-1 agreement with FP32 (FP32 scores 1.0): finer than top-1 on 20 images."""
        n = len(images) if num_samples is None else num_samples
        return imagenet.agreement(imagenet.predict(model, images[:n]), reference[:n])

    sim = QuantSim(folded, x[:1], quant_scheme="tf_enhanced")
    sim.compute_encodings([calibration[:8], calibration[8:]])
    groups = find_quantizer_groups(sim)
    assert len(groups) == len(sim.quantized_layers)  # no layer shares an input quantizer in this model
    start = time.perf_counter()
    result = choose_mixed_precision(
        sim, ["w8a8", "w4a8"], agreement, 0.1, forward_pass_callback=[calibration[:4]], phase1_metric="sqnr", fp32_accuracy=1.0
    )
    seconds = time.perf_counter() - start
    print(f"\nEfficientNet-Lite0: {result.message} ({seconds:.0f} s)")
    print(result.summary())
    assert result.target_met
    assert result.relative_bops < 1.0
    assert result.n_eval_calls <= 2 + 8  # SQNR phase 1 needs no eval calls; binary search over <= 49 moves
    costs = [p.relative_cost for p in result.pareto]
    accs = [p.accuracy for p in result.pareto]
    assert costs == sorted(costs, reverse=True) and accs == sorted(accs, reverse=True)
    assert agreement(sim.model) == pytest.approx(result.accuracy)
