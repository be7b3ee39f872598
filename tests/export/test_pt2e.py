"""The PT2E program: torch.export with quantized_decomposed Q/DQ ops, computing what the sim computes."""

from __future__ import annotations

import torch

from aq_search import QuantSim
from aq_search.examples.digits import DigitsCase
from aq_search.export import export_pt2e


def test_pt2e_program_matches_the_sim_bit_for_bit(digits: DigitsCase) -> None:
    sim = QuantSim(digits.model, digits.dummy_input, default_param_bw=4, default_output_bw=8, activation_symmetric=True)
    sim.compute_encodings(digits.calibration_batches)
    sim.set_bitwidth("fc", output_bw=16)
    sim.set_bitwidth("features.10", param_bw=16, param_dtype="float")
    sim.set_enabled("pool", output=False)
    q = sim.param_quantizer("features.6")
    g = torch.Generator().manual_seed(0)
    q.rounding = (torch.rand(sim.float_weight("features.6").shape, generator=g) > 0.5).to(torch.uint8)
    q.frozen = True
    program = export_pt2e(sim, digits.calibration_batches[0])
    calls = [n for n in program.graph.nodes if n.op == "call_function"]
    names = [str(n.target) for n in calls]
    assert any("quantize_per_channel" in t for t in names) and any("dequantize_per_tensor" in t for t in names)
    dtypes = {n.args[-1] for n in calls if "quantized_decomposed.quantize_per" in str(n.target)}
    assert {torch.int8, torch.int16} <= dtypes  # signed symmetric activations; 16 bits on the classifier's output
    per_channel = [n for n in calls if "quantized_decomposed.quantize_per_channel" in str(n.target)]
    assert per_channel and all(n.args[4:6] == (-8, 7) for n in per_channel if n.args[-1] == torch.int8)
    x = digits.split.test_x[:300]  # another batch size than the example: the batch dimension is dynamic
    with torch.no_grad():
        assert torch.equal(program.module()(x), sim.model(x))
