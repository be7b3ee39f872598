"""AMP's two guarantees for pipelines: stay within a cost budget, and never return worse than the input.

* **Budget.** ``budget=("w4a8", 1.5)``: a config may cost at most 1.5x the BOPs of every group at
  ``w4a8`` (the precision the user asked for). Phase 2 only considers the prefixes of its move list that
  are within that; when even the all-highest config is over it, the most accurate config within it is
  the cheapest prefix that fits.
* **Keep the input.** The sim AMP is given (say W4A8 with AdaRound rounding) is a candidate result too:
  when AMP's choice scores below it, the input is restored and returned. Layers AMP leaves at their
  input format keep their encodings exactly, AdaRound rounding included (``GroupPrecisions``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..quantsim import QuantSim
from ._candidates import Candidate, CandidateLike, parse_candidate
from ._cost import CostTable
from ._groups import QuantizerGroup

__all__ = ["budget_limit", "first_within", "input_assignment", "kept_input"]


def input_assignment(sim: QuantSim, groups: Sequence[QuantizerGroup]) -> dict[str, Candidate]:
    """Each group's current format as a candidate (its first enabled weight and activation quantizers)."""
    acts = sim.activation_quantizers
    out = {}
    for g in groups:
        params = [sim.param_quantizer(layer) for layer in g.layers if sim.param_quantizer(layer).enabled]
        inputs = [acts[a] for a in g.activation_quantizers if acts[a].enabled]
        p = params[0] if params else None
        a = inputs[0] if inputs else None
        out[g.name] = Candidate(
            param_bw=p.bitwidth if p is not None else 32,
            activation_bw=a.bitwidth if a is not None else 32,
            param_dtype=p.dtype if p is not None else "float",
            activation_dtype=a.dtype if a is not None else "float",
        )
    return out


def budget_limit(table: CostTable, budget: tuple[CandidateLike, float] | None, metric: str) -> float | None:
    """The absolute cost a config may reach: ``ratio`` x the cost of every group at the reference candidate."""
    if budget is None:
        return None
    reference, ratio = parse_candidate(budget[0]), float(budget[1])
    return ratio * table.cost_of({g.name: reference for g in table.groups}, metric) * (1 + 1e-9)


def first_within(
    table: CostTable,
    baseline: Mapping[str, Candidate],
    steps: Sequence[tuple[Mapping[str, Candidate], Any]],
    limit: float | None,
    metric: str,
) -> int:
    """The fewest moves after which the config costs at most ``limit`` (``len(steps)`` if none does)."""
    if limit is None:
        return 0
    configs = [baseline, *(s[0] for s in steps)]
    for k, config in enumerate(configs):
        if table.cost(config, metric) <= limit:
            return k
    return len(steps)


def kept_input(search: Any, result: Any, input_accuracy: float) -> Any:
    """``result`` replaced by the input config (restored on the sim) because that scores higher."""
    import dataclasses

    search.precisions.restore()
    table: CostTable = search.table
    start: dict[str, Candidate] = search.start
    base = table.cost(table.baseline("bops"), "bops")
    base_size = table.cost(table.baseline("size"), "size")
    message = (
        f"Kept the input: AMP's best config scored {result.accuracy:.4f}, below the input's {input_accuracy:.4f}, so the "
        "sim is returned as it came (every layer's format and encodings, AdaRound rounding included). "
        + (
            ""
            if result.baseline_accuracy > input_accuracy
            else f"Even every group at its highest candidate scores {result.baseline_accuracy:.4f}: add a candidate that is "
            "better than the input (e.g. 16-bit weights, 'w16a8')."
        )
    )
    return dataclasses.replace(
        result,
        config={layer: start[g.name].name for g in search.groups for layer in g.layers},
        group_config={g: c.name for g, c in start.items()},
        accuracy=input_accuracy,
        relative_bops=table.cost_of(start, "bops") / base if base else 0.0,
        relative_size=table.cost_of(start, "size") / base_size if base_size else 0.0,
        target_met=input_accuracy >= result.target_accuracy,
        message=message,
        n_eval_calls=search.evaluate.calls,
    )
