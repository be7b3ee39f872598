from __future__ import annotations

import torch
from torch import nn

from aq_search import QuantSim
from aq_search.amp import QuantizerGroup, find_quantizer_groups, format_groups, ungrouped_activation_quantizers

from .conftest import ConcatNet, ConvLinear, ResidualTwoHeads


def _by_layer(groups: tuple[QuantizerGroup, ...]) -> dict[str, QuantizerGroup]:
    return {layer: g for g in groups for layer in g.layers}


def test_one_group_per_layer_in_a_chain() -> None:
    sim = QuantSim(ConvLinear(), torch.randn(1, 3, 8, 8))
    groups = find_quantizer_groups(sim)
    assert [(g.name, g.layers, g.activation_quantizers) for g in groups] == [
        ("conv", ("conv",), ("x",)),
        ("fc", ("fc",), ("conv",)),  # through the Flatten (data movement)
    ]
    assert groups[1].param_quantizers == ("fc.weight",)
    assert ungrouped_activation_quantizers(sim, groups) == ["fc"]  # the model output feeds no layer


def test_residual_output_feeding_two_convs_shares_a_group() -> None:
    sim = QuantSim(ResidualTwoHeads(), torch.randn(1, 3, 8, 8))
    groups = find_quantizer_groups(sim)
    by_layer = _by_layer(groups)
    assert by_layer["head_a"] is by_layer["head_b"]
    shared = by_layer["head_a"]
    assert shared.layers == ("head_a", "head_b")
    assert len(shared.activation_quantizers) == 1  # the add's output
    assert set(sim.input_quantizers_of("head_a")) == set(shared.activation_quantizers)
    assert by_layer["stem"] is not by_layer["body"]
    assert len(groups) == 3


def test_concat_inputs_are_grouped_with_the_concat_output() -> None:
    sim = QuantSim(ConcatNet(), torch.randn(1, 3, 8, 8))
    groups = find_quantizer_groups(sim)
    by_layer = _by_layer(groups)
    cat = by_layer["conv_c"]
    # relu_a and relu_b (the concat's inputs) take one format with the concat's output, which conv_c reads;
    # relu_a also feeds conv_b, so conv_b joins the group
    assert {"relu_a", "relu_b"} <= set(cat.activation_quantizers)
    assert set(sim.input_quantizers_of("conv_c")) <= set(cat.activation_quantizers)
    assert by_layer["conv_b"] is cat
    assert cat.layers == ("conv_b", "conv_c")
    assert by_layer["conv_a"].activation_quantizers == ("relu",)
    assert by_layer["stem"].activation_quantizers == ("x",)


def test_disabled_quantizers_do_not_merge_groups() -> None:
    sim = QuantSim(ResidualTwoHeads(), torch.randn(1, 3, 8, 8))
    (shared,) = [g for g in find_quantizer_groups(sim) if "head_a" in g.layers]
    for name in shared.activation_quantizers:
        sim.activation_quantizers[name].enabled = False
    by_layer = _by_layer(find_quantizer_groups(sim))
    assert by_layer["head_a"] is not by_layer["head_b"]
    assert by_layer["head_a"].activation_quantizers == ()


def test_groups_read_well() -> None:
    sim = QuantSim(ResidualTwoHeads(), torch.randn(1, 3, 8, 8))
    groups = find_quantizer_groups(sim)
    text = format_groups(groups)
    assert "head_a, head_b" in text
    assert str(groups[0]) == "stem: weights of [stem]; activations [x]"


def test_shape_queries_are_not_data() -> None:
    """``x.view(x.size(0), -1)`` reads the batch size of the model input: that does not make it an input of fc."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            bs = x.size(0)
            return self.fc(self.pool(self.conv(x)).view(bs, -1))

    sim = QuantSim(Net(), torch.randn(2, 3, 8, 8))
    by_layer = _by_layer(find_quantizer_groups(sim))
    assert by_layer["conv"] is not by_layer["fc"]
    assert by_layer["fc"].activation_quantizers == ("pool",)
