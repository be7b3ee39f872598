"""The layer walk AdaRound and bias correction share."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
from torch import nn

from aq_search import InvalidInputError, QuantSim
from aq_search.techniques._layer_walk import NEVER_RAN, LayerWalk, calibration_inputs, select_layers


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.fc1 = nn.Linear(6, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.emb(ids))))


def _sim() -> tuple[QuantSim, list[torch.Tensor]]:
    torch.manual_seed(0)
    batches = [torch.randint(0, 10, (4, 2)) for _ in range(3)]
    sim = QuantSim(_Net(), batches[0], default_param_bw=8, default_output_bw=8)
    sim.compute_encodings(batches)
    return sim, batches


class _Record(LayerWalk):
    progress_label = "test"

    def __init__(self, sim: QuantSim, layers: list[str], before: bool) -> None:
        super().__init__(sim, layers)
        self.visit_before_step = before  # type: ignore[misc]
        self.seen: list[tuple[str, tuple[int, ...], bool]] = []

    def visit(self, node: fx.Node, name: str) -> None:
        assert self.stepper is not None
        values = self.stepper.first_input(node) if self.visit_before_step else self.stepper.values(node)
        self.seen.append((name, tuple(torch.cat(values).shape), self.sim.model.training))


def test_select_layers_names_the_unsupported_and_the_technique_reasons() -> None:
    sim, _ = _sim()
    layers, skipped = select_layers(sim, "{kind} is not walked", lambda name, _m: "no" if name == "fc2" else None)
    assert layers == ["fc1"]
    assert skipped == [("emb", "Embedding is not walked"), ("fc2", "no")]


@pytest.mark.parametrize("before", [True, False])
def test_walk_visits_layers_in_order_with_their_inputs_or_outputs_in_eval_mode(before: bool) -> None:
    sim, batches = _sim()
    sim.model.train()
    walk = _Record(sim, ["fc2", "fc1", "missing"], before)
    skipped = walk.walk(calibration_inputs(batches, 2, None, "test"))
    # execution order, two batches of 4 x 2 positions; inputs have 6 / 5 features, outputs 5 / 3
    features = [6, 5] if before else [5, 3]
    assert walk.seen == [("fc1", (8, 2, features[0]), False), ("fc2", (8, 2, features[1]), False)]
    assert skipped == [("missing", NEVER_RAN)]
    assert sim.model.training  # restored


def test_calibration_inputs_rejects_a_forward_fn_that_is_not_callable() -> None:
    with pytest.raises(InvalidInputError, match=r"The 'forward_fn' parameter of tool must be a callable"):
        calibration_inputs([torch.zeros(1)], 1, 3, "tool")  # type: ignore[arg-type]
