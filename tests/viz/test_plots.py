"""The plots return figures that show the study's data (matplotlib and plotly backends)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from aq_search import AutoQuantResult, InvalidInputError
from aq_search.viz import (
    AmpSummary,
    figure_png,
    pareto_front,
    plot_accuracy_vs_bops,
    plot_amp_pareto,
    plot_amp_sensitivity,
    plot_optimization_history,
    plot_orderings,
    plot_stage_waterfall,
    summarize_study,
)

from .conftest import synthetic_amp, synthetic_study

pytest.importorskip("matplotlib")
pytest.importorskip("plotly")


def by_gid(fig: Any, gid: str) -> list[Any]:
    (ax,) = fig.axes
    return [a for a in ax.get_children() if a.get_gid() == gid]


def offsets(fig: Any, gid: str) -> list[tuple[float, float]]:
    (artist,) = by_gid(fig, gid)
    return [(float(x), float(y)) for x, y in artist.get_offsets()]


def test_pareto_front() -> None:
    assert pareto_front([]) == []
    assert pareto_front([(0.5, 0.9)]) == [(0.5, 0.9)]
    # dominated (same cost lower accuracy; higher cost same accuracy) and duplicate points drop out
    points = [(0.5, 0.9), (0.25, 0.8), (0.5, 0.7), (1.0, 0.9), (0.75, 0.95), (0.25, 0.8), (0.3, 0.6)]
    assert pareto_front(points) == [(0.25, 0.8), (0.5, 0.9), (0.75, 0.95)]


def test_history_shows_every_trial_by_state() -> None:
    study = synthetic_study()
    fig = plot_optimization_history(study)
    assert offsets(fig, "complete") == [(3, 0.945), (4, 0.93)]
    assert offsets(fig, "reference") == [(0, 0.90)]
    assert offsets(fig, "pruned") == [(1, 0.70)]  # at the score of the stage it was pruned after
    assert [x for x, _ in offsets(fig, "failed")] == [2]
    (best_so_far,) = by_gid(fig, "best_so_far")
    assert best_so_far.get_xydata().tolist() == [[0, 0.90], [3, 0.945], [4, 0.945]]
    (target,) = by_gid(fig, "target")
    assert target.get_ydata()[0] == pytest.approx(0.94)
    assert figure_png(fig).startswith(b"\x89PNG")

    pl = plot_optimization_history(study, backend="plotly")
    traces = {t.name: t for t in pl.data}
    assert list(traces["complete"].x) == [0, 3, 4] and list(traces["complete"].y) == [0.90, 0.945, 0.93]
    assert list(traces["pruned (score when pruned)"].y) == [0.70]
    assert list(traces["best: trial 3"].y) == [0.945]


def test_stage_waterfall_of_best_and_of_a_pruned_trial() -> None:
    study = synthetic_study()
    fig = plot_stage_waterfall(study)  # default: the best trial (3)
    tops, bottoms, hatches = [], [], []
    for i in range(3):
        (bar,) = by_gid(fig, f"stage{i}")
        bottoms.append(bar.get_y())
        tops.append(bar.get_y() + bar.get_height())
        hatches.append(bar.get_hatch())
    # FP32 0.95 -> bnf 0.92 -> scheme 0.91 (on 100 samples) -> amp 0.945: each bar spans previous..current
    assert bottoms == pytest.approx([0.92, 0.91, 0.91])
    assert tops == pytest.approx([0.95, 0.92, 0.945])
    assert hatches == [None, "//", None]
    down, down2, up = (by_gid(fig, f"stage{i}")[0].get_facecolor() for i in range(3))
    assert down == down2 != up
    assert "FP32" in [t.get_text() for t in fig.axes[0].get_xticklabels()]

    pruned = plot_stage_waterfall(study, trial=1, backend="plotly")
    (wf,) = pruned.data
    assert list(wf.measure) == ["absolute", "relative", "relative"]
    assert np.cumsum(wf.y).tolist() == pytest.approx([0.95, 0.92, 0.70])
    with pytest.raises(InvalidInputError, match="no trial 9"):
        plot_stage_waterfall(study, trial=9)
    with pytest.raises(InvalidInputError, match="backend"):
        plot_stage_waterfall(study, backend="bokeh")


def test_accuracy_vs_bops_front() -> None:
    study = synthetic_study()
    fig = plot_accuracy_vs_bops(study)
    assert sorted(offsets(fig, "trials")) == [(0.5, 0.90), (0.6, 0.93), (0.7, 0.945)]
    (front,) = by_gid(fig, "front")
    # every complete trial is on the front here: cheaper ones score lower
    assert front.get_xydata().tolist() == [[0.5, 0.90], [0.6, 0.93], [0.7, 0.945]]
    pl = plot_accuracy_vs_bops(study, backend="plotly")
    traces = {t.name: t for t in pl.data}
    assert list(traces["Pareto front"].x) == [0.5, 0.6, 0.7]
    assert list(traces["best: trial 3"].x) == [0.7]


def test_orderings_rows() -> None:
    fig = plot_orderings(synthetic_study())
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["bnf>scheme  (1)", "bnf>cle>scheme>bc  (2, 1 failed)", "bnf>scheme>amp  (2)"]
    assert sorted(offsets(fig, "complete")) == [(0.90, 0), (0.93, 2), (0.945, 2)]
    assert offsets(fig, "pruned") == [(0.70, 1)]


def test_amp_sensitivity_sorted_and_chosen_marked(tmp_path: Path) -> None:
    amp = synthetic_amp()
    fig = plot_amp_sensitivity(amp, top=3)
    bars = by_gid(fig, "sensitivity")
    assert [b.get_width() for b in bars] == pytest.approx([0.048, 0.018, 0.001])  # most sensitive first, top 3
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["a \u2192 w4a8", "c \u2192 w4a8", "b \u2192 w4a8"]
    colors = [tuple(b.get_facecolor()) for b in bars]
    assert colors[0] == colors[1] != colors[2]  # b was lowered in the chosen config
    pl = plot_amp_sensitivity(amp, backend="plotly")
    assert list(pl.data[0].x) == pytest.approx([0.048, 0.018, 0.001, -0.002])
    front = plot_amp_pareto(amp)
    assert figure_png(front).startswith(b"\x89PNG")
    with pytest.raises(InvalidInputError, match="top"):
        plot_amp_sensitivity(amp, top=0)
    # from a study: the best trial that ran AMP, read from its amp.json
    path = tmp_path / "amp.json"
    path.write_text(json.dumps(amp.to_dict()))
    assert AmpSummary.load(path) == amp
    fig = plot_amp_sensitivity(synthetic_study(amp_path=path))
    assert fig.axes[0].get_title().startswith("trial 3: AMP sensitivity")
    with pytest.raises(InvalidInputError, match="no trial of this study ran mixed precision"):
        plot_amp_sensitivity(synthetic_study())


def test_plots_of_a_real_study(digits_result: AutoQuantResult) -> None:
    study = digits_result.study
    s = summarize_study(study)
    assert s.best is not None and s.best.number == digits_result.best_trial
    assert s.n_eval_calls == digits_result.n_eval_calls
    assert s.best.value == pytest.approx(digits_result.accuracy)
    fig = plot_optimization_history(study)
    shown = offsets(fig, "complete") + (offsets(fig, "reference") if by_gid(fig, "reference") else [])
    complete = [(t.number, t.value) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    np.testing.assert_allclose(sorted(shown), sorted(complete))
    fig = plot_stage_waterfall(digits_result)
    prev = digits_result.fp32_accuracy
    for i, st in enumerate(digits_result.stage_results):  # each bar spans the previous score .. this stage's score
        (bar,) = by_gid(fig, f"stage{i}")
        assert bar.get_y() == pytest.approx(min(prev, st.score))
        assert max(prev, st.score) - 1e-9 <= bar.get_y() + bar.get_height() <= max(prev, st.score) + 0.01
        prev = st.score
    fig = plot_accuracy_vs_bops(study)
    points = [(t.user_attrs["relative_bops"], t.value) for t in study.trials if t.state.name == "COMPLETE"]
    (front,) = by_gid(fig, "front")
    np.testing.assert_allclose(front.get_xydata(), pareto_front(points))
    amp_trial = s.amp_trial()
    if amp_trial is not None:
        amp = amp_trial.load_amp()
        assert amp is not None and math.isfinite(amp.relative_bops)
        assert len(by_gid(plot_amp_sensitivity(study), "sensitivity")) == min(30, len(amp.sensitivity))
