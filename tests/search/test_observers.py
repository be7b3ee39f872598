"""Records, artifacts and the report reach a search through callbacks: ``search`` imports no ``viz``."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import aq_search
from aq_search.search import _observers

from ._tiny import Tiny


def test_search_imports_no_viz() -> None:
    folder = Path(aq_search.__file__).parent / "search"
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                name = ("." * node.level) + (node.module or "")
                assert "viz" not in name and "inspect" not in name.split("."), f"{path.name} imports {name}"


def test_viz_attaches_itself_and_a_users_trial_callback_runs(tmp_path: Path, aq_seed: int) -> None:
    from aq_search.viz import publish_study
    from aq_search.viz._publish import record_trial_callback

    assert record_trial_callback in _observers.trial_callbacks()
    assert publish_study in _observers.result_callbacks()
    aq = Tiny(aq_seed).make(tmp_path, progress=False)
    seen: list[tuple[int, str]] = []

    def mine(trial: Any, run: Any, objective: Any) -> None:
        assert objective is aq.objective
        trial.set_user_attr("my_record", run.pipeline.ordering)  # the trial is still live
        seen.append((trial.number, run.pipeline.ordering))

    aq.objective.trial_callbacks.append(mine)
    result = aq.optimize(0.0, n_trials=2)
    assert len(seen) == 2
    assert [t.user_attrs["my_record"] for t in result.study.trials[:2]] == [o for _, o in seen]
    assert (tmp_path / "aq" / "report.html").is_file()  # the result callback (viz) still writes the report
