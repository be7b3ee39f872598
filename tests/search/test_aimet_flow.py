"""``replay_reference: aimet``: the reference trial follows AIMET AutoQuant's own flow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from aq_search import AutoQuant, load_search_space
from aq_search._errors import SearchSpaceError
from aq_search.search._aimet_flow import AIMET_SCHEME_CANDIDATES, aimet_candidates

from ._scripted import Scripted, batches, tiny_model

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space(replay: Any = "aimet") -> dict[str, Any]:
    return {
        "orderings": ["scheme>bnf>cle>adaround", "bnf>scheme>adaround"],
        # the space ranks pairs by SQNR over two candidates; the AIMET flow must use AIMET's five, by eval
        "scheme": {"candidates": ["select", "tf/tf"], "select_by": "sqnr", "select_candidates": ["tf/tf", "tf_enhanced/tf"]},
        "adaround": {"num_batches": 2, "num_iterations": {"low": 50, "high": 400}, "reg_param": {"low": 0.002, "high": 0.05}},
        "sampler": "random",
        "max_trials": 1,
        "pruner": {"type": "none"},
        "intermediate_num_samples": 4,  # the AIMET flow ignores it: every score is a full evaluation
        "replay_reference": replay,
    }


def _run(tmp_path: Path, scores: list[float], rest: float = 1.0) -> tuple[optuna.trial.FrozenTrial, Scripted]:
    model, data = tiny_model(), batches(4)
    evaluate = Scripted(scores, rest=rest)
    aq = AutoQuant(model, data[0], data, evaluate, param_bw=4, results_dir=tmp_path / "aq", search_space=_space(), seed=0)
    result = aq.optimize(allowed_accuracy_drop=0.01)
    return result.study.trials[0], evaluate


def test_w32_miss_is_aimets_early_exit(tmp_path: Path) -> None:
    # FP32 1.0; AIMET's five pairs scored by full evals (best 0.7); the W32 check 0.8 < target 0.99
    trial, evaluate = _run(tmp_path, [1.0, 0.5, 0.6, 0.7, 0.6, 0.5, 0.8])
    assert trial.user_attrs["reference_flow"] == "aimet"
    assert evaluate.calls == [None] * 7, "FP32, one full evaluation per AIMET pair, the W32 check: nothing else"
    assert "early exit" in trial.user_attrs["reference_early_exit"]
    assert trial.user_attrs["reference_w32"]["score"] == 0.8
    assert trial.user_attrs["stages_run"] == 1  # no BN fold, CLE or AdaRound after the exit
    note = trial.user_attrs["stage_scores"][0]["note"]
    assert all(pair in note for pair in AIMET_SCHEME_CANDIDATES) and "selected tf_enhanced/tf_enhanced" in note


def test_w32_pass_goes_on_and_stops_at_the_first_stage_meeting_the_target(tmp_path: Path) -> None:
    # five pairs at 1.0 (a met target at the scheme stage does not end AIMET's flow), W32 1.0, BN fold 1.0
    trial, evaluate = _run(tmp_path, [1.0] + [1.0] * 5 + [1.0, 1.0], rest=0.0)
    assert "reference_early_exit" not in trial.user_attrs
    assert trial.user_attrs["reference_w32"]["score"] == 1.0
    assert trial.user_attrs["stages_run"] == 2 and trial.user_attrs["ordering"] == "scheme>bnf>cle>adaround"
    assert evaluate.calls == [None] * 8, "every stage scored on the full evaluation, as AIMET does"
    ada = trial.user_attrs["reference_adaround"]
    assert ada["num_iterations"] == 15_000 and ada["early_stop_patience"] == 0  # AIMET's defaults, every iteration
    assert not any("SQNR" in d for d in trial.user_attrs["reference_differences"])


def test_candidates_follow_aimets_16_bit_filter() -> None:
    assert aimet_candidates(8, 8) == AIMET_SCHEME_CANDIDATES
    assert aimet_candidates(16, 8) == ("tf/tf",)
    assert aimet_candidates(8, 16) == ("tf/tf", "tf_enhanced/tf")


def test_replay_reference_key_accepts_aimet_and_rejects_other_strings() -> None:
    assert load_search_space(_space()).replay_reference == "aimet"
    assert load_search_space(_space(True)).replay_reference is True
    with pytest.raises(SearchSpaceError, match=r"replay_reference.*'aimet'"):
        load_search_space(_space("yes"))
