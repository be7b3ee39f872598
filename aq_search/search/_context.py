"""What a pipeline run works with: the run context (model, data, evaluation, caches) and a run's state.

A technique's ``run`` hook (see :class:`~aq_search.techniques.TechniqueSpec`) gets the context, the
run's :class:`StageState` and the stage, and sets the state's fields.
"""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx
from torch import Tensor, nn

from .._data import tensor_fingerprint
from ..quantsim import QuantSim

__all__ = ["RunContext", "StageState", "model_fingerprint"]


class _LRU(OrderedDict[str, Any]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_item(self, key: str) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        return None

    def put(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


def model_fingerprint(model: nn.Module) -> str:
    code = model.code if isinstance(model, fx.GraphModule) else repr(model)
    return tensor_fingerprint(code, dict(model.state_dict()))


@dataclass
class RunContext:
    """Everything a pipeline run needs: the prepared FP32 model, data, evaluation and caches."""

    model: fx.GraphModule
    dummy_input: Any
    calibration: list[Any]
    evaluate: Callable[[nn.Module, int | None], float]
    fp32_accuracy: float
    target: float
    param_bw: int
    output_bw: int
    default_pair: str = "tf_enhanced/tf_enhanced"
    default_per_channel: bool = True
    activation_symmetric: bool = False  # the deployment target's activation grid (aq_search.targets)
    forward_fn: Callable[[nn.Module, Any], Any] | None = None
    intermediate_num_samples: int | None = None
    adaround_cache: Any = None
    seed: int = 0
    leaf_modules: Sequence[Any] = ()
    model_cache: _LRU = field(default_factory=lambda: _LRU(8))
    sim_cache: _LRU = field(default_factory=lambda: _LRU(4))
    cache_hits: dict[str, int] = field(default_factory=dict)
    reference_outputs: list[Tensor] | None = None  # FP32 outputs on calibration batches (scheme selection by sqnr)
    budget: Any = None  # search._budget.Budget: results over it never meet the target
    known: Any = None  # search._prefix.KnownScores: prefix scores already in the study
    lazy_scoring: bool = False  # stages before a cheap stage are not evaluated (see _screen); off in the AIMET flow
    tie_db: float = 0.0  # proxy (output SQNR) gap under which candidates tie and the eval breaks the tie (see _screen)

    def hit(self, what: str) -> None:
        self.cache_hits[what] = self.cache_hits.get(what, 0) + 1

    def feed(self, model: nn.Module) -> None:
        from .._data import feed_batch

        for batch in self.calibration:
            if self.forward_fn is not None:
                self.forward_fn(model, batch)
            else:
                feed_batch(model, batch)

    def calibrated_sim(self, model: fx.GraphModule, pair: str, per_channel: bool) -> QuantSim:
        """A calibrated sim of ``model`` with ``pair`` schemes; calibration is cached by content."""
        key = hashlib.sha256(f"{model_fingerprint(model)}|{per_channel}|{self.param_bw}|{self.output_bw}".encode()).hexdigest()
        cached = self.sim_cache.get_item(key)
        param_scheme, act_scheme = pair.split("/")
        if cached is not None:
            self.hit("calibration")
            sim: QuantSim = copy.deepcopy(cached)
            sim.set_quant_scheme(param_scheme=param_scheme, activation_scheme=act_scheme)
            return sim
        sim = QuantSim(
            model,
            self.dummy_input,
            param_quant_scheme=param_scheme,
            activation_quant_scheme=act_scheme,
            default_param_bw=self.param_bw,
            default_output_bw=self.output_bw,
            per_channel=per_channel,
            activation_symmetric=self.activation_symmetric,
            leaf_modules=self.leaf_modules,
        )
        sim.compute_encodings(self.feed)
        self.sim_cache.put(key, copy.deepcopy(sim))
        return sim



@dataclass
class StageState:
    """A run's state between stages, and what the current stage reports.

    Attributes:
        model: the float model as the model techniques left it.
        pair / per_channel: the range setting the sim is (to be) built with.
        sim: the current sim, or ``None`` when it must be (re)built from ``model`` and ``pair``.
        amp_result: the last mixed-precision result of the run.
        record: the study's record of this very pipeline prefix (its score and choice), or ``None``.
        previous_full: the previous stage's score when it was a full evaluation.
        prior: what the stage's input is estimated to score (the previous stage's score, full or on a
            subset, or the score of the record that predicted it misses); ``None`` when unknown.
        proxy: the stage's output SQNR (dB) when the screen measured it.
        predicted: the score of the study's record that predicted this stage misses (it was not evaluated).
        note / choice: what the stage says and chose (recorded with its score).
        known_score: a score of the stage's sim measured while running it (no eval call needed).
        known_full: ``known_score`` came from a full evaluation.
    """

    model: fx.GraphModule
    pair: str
    per_channel: bool
    sim: QuantSim | None = None
    amp_result: Any = None
    record: dict[str, Any] | None = None
    previous_full: float | None = None
    prior: float | None = None
    proxy: float | None = None
    predicted: float | None = None
    note: str = ""
    choice: Any = None
    known_score: float | None = None
    known_full: bool = False
    alternatives: list[tuple[str, QuantSim, float]] = field(default_factory=list)  # near-tie scheme pairs (see _screen)

    def begin(self, record: dict[str, Any] | None, previous_full: float | None, prior: float | None = None) -> None:
        """Reset what a stage reports, before it runs."""
        self.record, self.previous_full = record, previous_full
        self.prior = previous_full if prior is None else prior
        self.proxy = self.predicted = None
        self.note, self.choice, self.known_score, self.known_full = "", None, None, False
        self.alternatives = []
