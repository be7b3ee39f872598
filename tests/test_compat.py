"""``forward_fn`` means ``forward_fn(model, batch)``; the old ``forward_fn=(model)`` keyword still works, with a warning."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from aq_search import InvalidInputError, QuantSim, choose_mixed_precision
from aq_search._compat import UNSET, renamed_parameter


def _sim_and_batches() -> tuple[QuantSim, list[torch.Tensor]]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    batches = [torch.randn(4, 3, 8, 8) for _ in range(2)]
    return QuantSim(net, batches[0], default_param_bw=8, default_output_bw=8), batches


def test_renamed_parameter_passes_the_new_name_through_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert renamed_parameter("f", "old", "new", UNSET, 3) == 3


def test_compute_encodings_old_keyword_warns_naming_the_new_one_and_still_calibrates() -> None:
    sim, batches = _sim_and_batches()
    seen: list[int] = []

    def callback(model: nn.Module, n: int) -> None:
        seen.append(n)
        for x in batches:
            model(x)

    message = r"'forward_fn' parameter of QuantSim.compute_encodings is renamed 'forward_pass_callback'"
    with pytest.warns(DeprecationWarning, match=message):
        sim.compute_encodings(forward_fn=callback, forward_fn_args=7)
    assert seen == [7]
    assert all(q.scale is not None for q in sim.activation_quantizers.values() if q.enabled)


def test_compute_encodings_new_keyword_does_not_warn() -> None:
    sim, batches = _sim_and_batches()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        sim.compute_encodings(forward_pass_callback=lambda model: [model(x) for x in batches])
    assert sim.encodings()["activation_encodings"]


def test_both_names_is_an_error() -> None:
    sim, batches = _sim_and_batches()
    with pytest.warns(DeprecationWarning), pytest.raises(InvalidInputError, match="both 'forward_pass_callback' and"):
        sim.compute_encodings(batches, forward_fn=batches)


def test_choose_mixed_precision_old_keyword_warns_and_calibrates() -> None:
    sim, batches = _sim_and_batches()

    def evaluate(model: nn.Module, num_samples: int | None = None) -> float:
        return 1.0

    message = r"'forward_fn' parameter of choose_mixed_precision is renamed 'forward_pass_callback'"
    with pytest.warns(DeprecationWarning, match=message):
        result = choose_mixed_precision(sim, ["w8a8", "w4a8"], evaluate, 0.5, forward_fn=batches, fp32_accuracy=1.0)
    assert result.target_met
