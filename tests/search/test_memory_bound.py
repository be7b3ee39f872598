"""Memory: the number of live model copies stays bounded across trials (issue 13 point 7).

The search caches folded/equalized models and calibrated sims by content (least recently used first
out) and keeps one best result; nothing else may hold a model from one trial to the next. The test runs
six trials that never meet the target and counts the live ``QuantSim`` and ``fx.GraphModule``
objects after each: the count never exceeds the caches' capacity plus a constant (a trial that kept
one more model than the caches allow would break the bound within the six trials).
"""

from __future__ import annotations

import gc
from pathlib import Path

import optuna
from torch import fx

from aq_search import QuantSim

from ._tiny import Tiny, space


def _live() -> tuple[int, int]:
    gc.collect()
    objects = gc.get_objects()
    return sum(isinstance(o, QuantSim) for o in objects), sum(isinstance(o, fx.GraphModule) for o in objects)


def test_live_model_copies_stay_bounded_across_trials(tmp_path: Path) -> None:
    t = Tiny(0)
    orderings = ["bnf>scheme", "bnf>cle>scheme", "bnf>cle>scheme>bc"]
    aq = t.make(tmp_path, search_space=space(max_trials=6, orderings=orderings), param_bw=3, output_bw=3)
    study = aq.setup_study(allowed_accuracy_drop=0.0)  # W3A3 with no allowed drop: no trial meets it
    before = _live()
    counts: list[tuple[int, int]] = []
    study.optimize(aq.objective, n_trials=6, callbacks=[aq.objective.after_trial, lambda s, tr: counts.append(_live())])
    assert len(counts) == 6
    assert all(tr.state == optuna.trial.TrialState.COMPLETE for tr in study.trials)
    ctx = aq.objective.ctx
    # caches (model copies, calibrated sims) + the best run kept + the prepared FP32 model and one trial in flight
    bound_models = before[1] + ctx.model_cache.size + ctx.sim_cache.size + 4
    bound_sims = before[0] + ctx.sim_cache.size + 3
    assert max(c[0] for c in counts) <= bound_sims, counts
    assert max(c[1] for c in counts) <= bound_models, counts
