"""The ``amp`` stage's escape hatch: how many calibration samples its output probes run on."""

from __future__ import annotations

import torch
from torch import nn

from aq_search import QuantSim
from aq_search.search._escape_stage import PROBE_MACS, PROBE_SAMPLES, PROBE_SAMPLES_MAX, probe_samples


def _sim(model: nn.Module, dummy: torch.Tensor) -> QuantSim:
    return QuantSim(model.eval(), dummy)


def test_a_small_model_is_probed_on_the_most_samples() -> None:
    sim = _sim(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)), torch.zeros(1, 16))
    assert probe_samples(sim) == PROBE_SAMPLES_MAX  # 832 MACs per sample


def test_an_imagenet_sized_layer_is_probed_on_the_fewest_samples() -> None:
    # 224 x 224 x 64 outputs x 27 MACs each: 86.7 MMACs per sample, a probe of 8 is 694 MMACs > PROBE_MACS
    sim = _sim(nn.Sequential(nn.Conv2d(3, 64, 3, padding=1)), torch.zeros(1, 3, 224, 224))
    assert probe_samples(sim) == PROBE_SAMPLES


def test_in_between_the_probe_keeps_within_its_macs() -> None:
    # 96 x 96 x 64 outputs x 27 MACs: 15.9 MMACs per sample, so 16 samples fit 256 MMACs and 17 do not
    sim = _sim(nn.Sequential(nn.Conv2d(3, 64, 3, padding=1)), torch.zeros(1, 3, 96, 96))
    n = probe_samples(sim)
    macs = 96 * 96 * 64 * 27
    assert n == 16 and n * macs <= PROBE_MACS < (n + 1) * macs
