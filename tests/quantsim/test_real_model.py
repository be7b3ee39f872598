"""QuantSim on EfficientNet-Lite0 with ImageNet images (slow; needs the realcases extra)."""

from __future__ import annotations

import pytest
import torch

from aq_search import QuantSim
from aq_search.examples import imagenet

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not imagenet.is_available(), reason="EfficientNet-Lite0 packages not installed: " + " ".join(imagenet.REQUIREMENTS)
    ),
]


@pytest.fixture(scope="module")
def case() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    model = imagenet.load_efficientnet_lite0()
    calib = imagenet.augmented_images(32, seed=1)
    views = imagenet.augmented_images(64, seed=2)
    x, _ = imagenet.imagenet_images()
    return model, calib, torch.cat([x, views]), imagenet.predict(model, torch.cat([x, views]))


def test_16_bit_sim_matches_fp32(case: tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    model, calib, _, _ = case
    sim = QuantSim(model, calib[:1], default_param_bw=16, default_output_bw=16, quant_scheme="tf")
    sim.compute_encodings(lambda m: [m(calib[i : i + 16]) for i in range(0, len(calib), 16)])
    ref = imagenet.predict(model, calib)
    got = imagenet.predict(sim.model, calib)
    rel = float((ref - got).abs().max() / ref.abs().max())
    assert rel < 1e-3, rel


def test_w8a8_per_channel_agrees_with_fp32(case: tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    model, calib, images, ref_logits = case
    sim = QuantSim(model, calib[:1], default_param_bw=8, default_output_bw=8, per_channel=True)
    sim.compute_encodings(lambda m: [m(calib[i : i + 16]) for i in range(0, len(calib), 16)])
    logits = imagenet.predict(sim.model, images)
    # measured: 0.95+ top-1 agreement with FP32 on 84 images (20 ImageNet + 64 crops)
    assert imagenet.agreement(logits, ref_logits) >= 0.9
    x, y = imagenet.imagenet_images()
    assert imagenet.top1(imagenet.predict(sim.model, x), y) >= 0.85
