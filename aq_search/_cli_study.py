"""``aq-search run`` and ``aq-search worker``: one study, searched by one or many processes."""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from collections import Counter
from typing import Any

from ._errors import InvalidInputError

__all__ = ["add_study_commands", "run_study_command"]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", help="package.module:build or path/to/file.py:build; build() returns AutoQuant's kwargs")
    parser.add_argument(
        "--storage",
        default=None,
        help="Optuna RDB URL (sqlite:///study.db, postgresql://user:pw@host/db) or a path ending in .log "
        "(JournalStorage file, one machine); default: the task's, else sqlite:///RESULTS_DIR/study.db",
    )
    parser.add_argument("--study", default=None, help="study name (default: the task's, else aq-search-<model>-w<P>a<O>)")
    parser.add_argument("--results-dir", default=None, help="where this process writes the best model (default: aq_results)")
    parser.add_argument("--n-trials", type=int, default=None, help="at most this many trials in this process")
    parser.add_argument("--timeout", type=float, default=None, help="start no new trial after this many seconds")
    parser.add_argument("--heartbeat-interval", type=int, default=None, help="seconds between heartbeats (RDB; default 60)")
    parser.add_argument("--grace-period", type=int, default=None, help="seconds without heartbeat before a trial is failed")
    parser.add_argument("--max-retries", type=int, default=None, help="retries of a trial whose worker died (default 2)")


def add_study_commands(sub: Any) -> None:
    """Add ``run`` and ``worker`` to the ``aq-search`` subcommands."""
    run = sub.add_parser("run", help="run (or resume) the search of a task; creates the study or joins it")
    _common(run)
    run.add_argument("--space", default=None, help="search space: default, fast, thorough or a YAML path (default: the task's)")
    run.add_argument("--allowed-drop", type=float, default=0.01, help="tolerated accuracy drop (default 0.01)")
    worker = sub.add_parser("worker", help="join an existing study as one more worker process")
    _common(worker)
    worker.add_argument(
        "--wait", type=float, default=0.0, help="wait up to this many seconds for `aq-search run` to create the study"
    )


def _task_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from .search._task import load_task

    kwargs = load_task(args.task)
    if args.results_dir is not None:
        kwargs["results_dir"] = args.results_dir
    if args.storage is not None:
        kwargs["storage"] = args.storage
    if args.study is not None:
        kwargs["study_name"] = args.study
    for key in ("heartbeat_interval", "grace_period", "max_retries"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    return kwargs


def _worker_seed(seed: Any) -> int | None:
    """A sampler seed of this process's own: workers with one seed would propose the same trials."""
    from .search._storage import worker_id

    if seed is None:
        return None
    return int.from_bytes(hashlib.sha256(f"{seed}-{worker_id()}".encode()).digest()[:4], "little") >> 1


def _join(kwargs: dict[str, Any], wait: float) -> tuple[dict[str, Any], float]:
    """The study's search space and allowed drop, waiting up to ``wait`` s for ``aq-search run`` to set them."""
    import optuna

    from .search import AutoQuant
    from .search._storage import is_journal_path, storage_label

    probe = AutoQuant(**kwargs)
    spec = probe._storage_spec()
    name = probe.study_name or probe._default_study_name()
    deadline = time.monotonic() + wait
    while True:
        attrs: dict[str, Any] | None = None
        names: list[str] = []
        if not (is_journal_path(spec) and not os.path.exists(str(spec))):  # don't create a journal file
            names = optuna.study.get_all_study_names(storage=probe._storage())
            if name in names:
                attrs = optuna.load_study(study_name=name, storage=probe._storage()).user_attrs
        if attrs is not None and "search_space" in attrs and "allowed_accuracy_drop" in attrs:
            return dict(attrs["search_space"]), float(attrs["allowed_accuracy_drop"])
        if time.monotonic() >= deadline:
            break
        time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))
    where = storage_label(spec)
    if attrs is None:
        known = f" (it has: {', '.join(sorted(names))})" if names else ""
        raise InvalidInputError(
            f"study {name!r} does not exist in {where}{known}. Start it with `aq-search run TASK --storage {where} "
            f"--study {name}`, or pass --wait SECONDS to wait for it."
        )
    raise InvalidInputError(
        f"study {name!r} in {where} was not set up by `aq-search run` (it has no search space or allowed drop yet); "
        "pass --wait SECONDS to wait for it."
    )


def _summary(role: str, result: Any, storage: str) -> None:
    from .search._storage import WORKER_ATTR, worker_id

    study = result.study
    trials = study.trials
    states = Counter(t.state.name.lower() for t in trials)
    me = worker_id()
    mine = sum(1 for t in trials if t.user_attrs.get(WORKER_ATTR) == me)
    retried = [f"{t.user_attrs['retry_of']}->{t.number}" for t in trials if "retry_of" in t.user_attrs]
    verdict = "target met" if result.target_met else "target NOT met"
    print(f"aq-search {role} {me}: study {study.study_name!r} in {storage}")
    print(
        f"  FP32 {result.fp32_accuracy:.4f}, target {result.target_accuracy:.4f}, best {result.accuracy:.4f} "
        f"by trial {result.best_trial} ({verdict}): {result.pipeline}"
    )
    counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    print(f"  trials: {len(trials)} in the study ({counts}); {mine} run by this process; eval calls: {result.n_eval_calls}")
    if retried:
        print(f"  retried after their worker died: {', '.join(retried)}")
    print(f"  results: {os.path.join(result.results_dir, 'best')}")


def run_study_command(args: argparse.Namespace) -> int:
    """``aq-search run`` / ``aq-search worker``; returns the exit status (0: target met, 1: not met)."""
    import optuna

    from .search import AutoQuant
    from .search._storage import storage_label

    if args.verbose < 2:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    kwargs = _task_kwargs(args)
    if args.command == "run":
        if args.space is not None:
            kwargs["search_space"] = args.space
        drop = args.allowed_drop
    else:
        kwargs["search_space"], drop = _join(kwargs, args.wait)
        kwargs["sampler_seed"] = _worker_seed(kwargs.get("seed"))
    aq = AutoQuant(**kwargs)
    result = aq.optimize(allowed_accuracy_drop=drop, n_trials=args.n_trials, timeout=args.timeout)
    _summary(args.command, result, storage_label(aq._storage_spec()))
    return 0 if result.target_met else 1
