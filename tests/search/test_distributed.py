"""Many worker processes on one study: PostgreSQL (heartbeats) and a journal file; kill, retry, resume.

The multi-process tests run ``aq-search run`` / ``aq-search worker`` as real processes on the task in
``dist_task.py`` and SIGKILL them mid-trial. To make the order of events deterministic, the test
(as a user may) enqueues trials that miss the target ahead of the search, and the first worker hangs
in trial 0, the reference recipe, which meets the target: so the target is met by the retry of the
killed trial, after it has been failed and re-enqueued by another worker.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from aq_search import InvalidInputError
from aq_search._cli import main as cli_main
from aq_search.examples.digits import digits_case
from aq_search.search import load_task, make_storage
from aq_search.search._storage import fail_dead_local_trials, storage_label, worker_id

from .._postgres import PostgresUnavailable, throwaway_postgres
from .dist_task import BAD_PARAMS, DROP

optuna.logging.set_verbosity(optuna.logging.WARNING)

HERE = Path(__file__).resolve().parent
TASK = f"{HERE / 'dist_task.py'}:build"
REPO = HERE.parent.parent


# -- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("digits-model")
    digits_case(path)  # the shipped weights: nothing to train; the folder stays for the workers' environment
    return path


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (see ``tests/_postgres.py``); skips where there is none."""
    cluster = throwaway_postgres()
    try:
        url = cluster.__enter__()
    except PostgresUnavailable as err:
        pytest.skip(str(err))
    try:
        yield url
    finally:
        cluster.__exit__(None, None, None)


# -- quick checks -----------------------------------------------------------------------------------------


def test_load_task_by_module_and_by_path(digits_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AQ_TEST_DIGITS_CACHE", str(digits_cache))
    monkeypatch.setenv("AQ_SEARCH_CACHE", str(digits_cache))
    by_path = load_task(TASK)
    assert by_path["param_bw"] == 4 and by_path["heartbeat_interval"] == 1 and callable(by_path["eval_callback"])
    by_module = load_task("aq_search.examples.digits:build_task")
    assert (by_module["param_bw"], by_module["output_bw"], by_module["seed"]) == (4, 8, 0)
    for bad, match in (
        ("no_colon", "package.module:function"),
        ("aq_search.examples.digits:nope", "has no function 'nope'"),
        ("aq_search.not_there:build", "cannot import module"),
        ("missing/file.py:build", "does not exist"),
        ("aq_search.examples.digits:digits_case", "must return a dict"),
    ):
        with pytest.raises(InvalidInputError, match=match):
            load_task(bad)


def test_storage_from_url_or_journal_path(tmp_path: Path) -> None:
    rdb = make_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat_interval=5, grace_period=11, max_retries=1)
    assert isinstance(rdb, optuna.storages.RDBStorage)
    assert rdb.get_heartbeat_interval() == 5 and rdb.grace_period == 11
    assert isinstance(rdb.get_heartbeat_stale_trial_callback(), optuna.storages.RetryHeartbeatStaleTrialCallback)
    assert make_storage(f"sqlite:///{tmp_path / 't.db'}", heartbeat_interval=None).get_heartbeat_interval() is None
    assert make_storage("sqlite:///:memory:", heartbeat_interval=5).get_heartbeat_interval() is None  # no thread can share it
    assert isinstance(make_storage(str(tmp_path / "study.log")), optuna.storages.JournalStorage)
    with pytest.raises(InvalidInputError, match=r"path ending in \.log"):
        make_storage(str(tmp_path / "study.db"))
    assert storage_label("postgresql://me:secret@db:5432/aq") == "postgresql://me:***@db:5432/aq"


def test_storage_retries_when_another_worker_creates_the_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers opening a new database at once: one sees "table ... already exists" and must retry."""
    import sqlalchemy.exc

    from aq_search.search import _storage

    real = optuna.storages.RDBStorage
    calls: list[str] = []

    def racing(url: str, **kwargs: Any) -> optuna.storages.RDBStorage:
        calls.append(url)
        if len(calls) == 1:  # what SQLAlchemy raises when another process created the table first
            raise sqlalchemy.exc.OperationalError("CREATE TABLE studies", {}, Exception("table studies already exists"))
        if len(calls) == 2:  # ... or stamped the schema version first
            raise sqlalchemy.exc.IntegrityError(
                "INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed: alembic_version.version_num")
            )
        return real(url, **kwargs)

    monkeypatch.setattr(_storage, "RDBStorage", racing)
    storage = make_storage(f"sqlite:///{tmp_path / 'race.db'}", heartbeat_interval=None)
    assert isinstance(storage, real) and len(calls) == 3
    calls.clear()

    def broken(url: str, **kwargs: Any) -> optuna.storages.RDBStorage:
        calls.append(url)
        raise sqlalchemy.exc.OperationalError("CONNECT", {}, Exception("unable to open database file"))

    monkeypatch.setattr(_storage, "RDBStorage", broken)
    with pytest.raises(sqlalchemy.exc.OperationalError, match="unable to open"):  # other errors are not retried
        make_storage(f"sqlite:///{tmp_path / 'other.db'}", heartbeat_interval=None)
    assert len(calls) == 1


def test_journal_trial_of_a_dead_local_worker_is_failed_and_retried(tmp_path: Path) -> None:
    storage = make_storage(str(tmp_path / "study.log"))
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    done = study.ask()
    done.suggest_categorical("x", ["a", "b"])
    study.tell(done, 1.0)
    alive = study.ask()
    alive.suggest_categorical("x", ["a", "b"])
    alive.set_user_attr("worker", worker_id())
    orphan = study.ask()
    orphan.suggest_categorical("x", ["a", "b"])
    orphan.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")
    elsewhere = study.ask()
    elsewhere.set_user_attr("worker", f"another-host-{socket.gethostname()}:{dead.pid}")
    assert fail_dead_local_trials(study, storage, max_retries=2) == [orphan.number]
    assert fail_dead_local_trials(study, storage, max_retries=2) == []  # failed once, retried once
    trials = study.trials
    assert trials[orphan.number].state == TrialState.FAIL
    assert [t.state for t in trials[:2]] == [TrialState.COMPLETE, TrialState.RUNNING]
    assert trials[elsewhere.number].state == TrialState.RUNNING  # other hosts: PostgreSQL's business
    retry = trials[-1]
    assert retry.state == TrialState.WAITING and retry.params == trials[orphan.number].params
    assert retry.system_attrs["failed_trial"] == orphan.number
    # the retry still carries its predecessor's worker: not mistaken for a dead worker's trial once popped
    popped = study.ask()
    assert popped.number == retry.number
    assert fail_dead_local_trials(study, storage, max_retries=2) == []
    assert study.trials[retry.number].state == TrialState.RUNNING


def test_worker_refuses_a_study_that_does_not_exist(digits_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setenv("AQ_TEST_DIGITS_CACHE", str(digits_cache))
    journal = tmp_path / "none.log"
    rc = cli_main(["worker", TASK, "--storage", str(journal), "--study", "nope", "--results-dir", str(tmp_path / "r")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "study 'nope' does not exist" in err and "aq-search run" in err
    assert not journal.exists()
    sqlite = f"sqlite:///{tmp_path / 'x.db'}"
    optuna.create_study(study_name="other", storage=sqlite)
    assert cli_main(["worker", TASK, "--storage", sqlite, "--study", "nope", "--results-dir", str(tmp_path / "r")]) == 2
    assert "(it has: other)" in capsys.readouterr().err


# -- many processes ---------------------------------------------------------------------------------------


class Workers:
    """``aq-search`` processes on one study, with their output in files."""

    def __init__(self, tmp: Path, storage: str, cache: Path) -> None:
        self.tmp, self.storage, self.cache = tmp, storage, cache
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: str, **env: str) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "aq_search", command, TASK, "--storage", self.storage, "--study", "dist"]
        args += ["--results-dir", str(self.tmp / name)]
        if command == "run":
            args += ["--allowed-drop", str(DROP)]
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "AQ_TEST_DIGITS_CACHE": str(self.cache), **env}
        out = open(self.tmp / f"{name}.out", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(args, env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        self.procs[name] = proc
        return proc

    def output(self, name: str) -> str:
        return (self.tmp / f"{name}.out").read_text(errors="replace")

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(timeout=30)

    def id(self, name: str) -> str:
        return f"{socket.gethostname()}:{self.procs[name].pid}"

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


def _wait(what: str, check: Callable[[], Any], workers: Workers, timeout: float = 180.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        for name, proc in workers.procs.items():
            if proc.poll() not in (None, -signal.SIGKILL) and proc.returncode != 0:
                pytest.fail(f"{name} exited with {proc.returncode} while waiting for {what}:\n{workers.output(name)[-3000:]}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}:\n" + "\n".join(f"--- {n}\n{workers.output(n)[-2000:]}" for n in workers.procs))


def _storage_for_test(storage: str) -> optuna.storages.BaseStorage:
    return make_storage(storage, heartbeat_interval=None)  # the test only reads and enqueues


def _running_by(study: optuna.Study, worker: str) -> FrozenTrial | None:
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("worker") == worker:
            return t
    return None


def _retries_of(trials: list[FrozenTrial], number: int) -> list[FrozenTrial]:
    return [t for t in trials if (t.system_attrs.get("retry_history") or [None])[-1] == number]


@pytest.fixture(scope="module")
def single_process_best(digits_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> float:
    """The same task searched by one process, for the quality the many-worker study must reach."""
    tmp = tmp_path_factory.mktemp("single")
    workers = Workers(tmp, f"sqlite:///{tmp / 'single.db'}", digits_cache)
    proc = workers.start("single", "run")
    # rc 1 only says the target was missed: judge the study, which says by how much and what ran
    assert proc.wait(timeout=300) in (0, 1), workers.output("single")
    study = optuna.load_study(study_name="dist", storage=workers.storage)
    target = float(study.user_attrs["target_accuracy"])
    scores = [(t.number, t.value) for t in study.trials if t.value is not None]
    assert "target_met_by" in study.user_attrs, f"no trial met the target {target:.4f}: {scores}"
    best = study.trials[int(study.user_attrs["target_met_by"])]
    assert best.value is not None and best.value >= target
    # the design of the kill tests below: the reference recipe (trial 0) meets the target by construction
    assert best.number == 0 and study.trials[0].user_attrs.get("reference_recipe") is True, scores
    return float(best.value)


def _kill_retry_resume(tmp: Path, storage: str, cache: Path, single_best: float) -> None:
    workers = Workers(tmp, storage, cache)
    hang = tmp / "hang"
    hang.mkdir()
    try:
        # 1. the first worker creates the study and hangs in trial 0 (the reference recipe, which meets the target)
        first = workers.start("first", "run", AQ_TEST_HANG_DIR=str(hang))
        _wait("the first worker to hang mid-trial", lambda: (hang / str(first.pid)).exists(), workers)
        study = optuna.load_study(study_name="dist", storage=_storage_for_test(storage))
        assert study.trials[0].state == TrialState.RUNNING and study.trials[0].user_attrs["worker"] == workers.id("first")
        for params in BAD_PARAMS * 3:  # trials that miss the target run before anything the sampler proposes
            study.enqueue_trial(params)
        # 2. two more workers join; once they have completed trials, the first is killed mid-trial
        for name in ("second", "third"):
            workers.start(name, "worker", AQ_TEST_EVAL_SLEEP="0.4")
        _wait("two completed trials", lambda: len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= 2, workers)
        workers.kill("first")
        # 3. then both others, each in the middle of a trial: every worker is gone
        def both_mid_trial() -> list[FrozenTrial] | None:
            found = [_running_by(study, workers.id(name)) for name in ("second", "third")]
            return [t for t in found if t is not None] if all(found) else None

        running = _wait("both workers mid-trial", both_mid_trial, workers)
        workers.kill("second")
        workers.kill("third")
        killed = [0, *(t.number for t in running)]
        before = {t.number: (t.params, t.value) for t in study.get_trials(deepcopy=True, states=(TrialState.COMPLETE,))}
        assert before, "some trials completed before every worker was killed"
        # 4. start again (after the heartbeat grace period: the dead trials are stale by then), resume, reach the target
        time.sleep(4)
        for name in ("fourth", "fifth"):
            workers.start(name, "worker", AQ_TEST_EVAL_SLEEP="0.1")
        for name in ("fourth", "fifth"):
            assert workers.procs[name].wait(timeout=300) == 0, workers.output(name)
            assert "target met" in workers.output(name)
    finally:
        workers.stop_all()

    study = optuna.load_study(study_name="dist", storage=_storage_for_test(storage))
    trials = study.trials
    target = float(study.user_attrs["target_accuracy"])
    # no completed trial lost or changed; no trial left running
    assert {t.number: (t.params, t.value) for t in trials if t.number in before} == before
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    # every killed trial failed and was re-enqueued exactly once with its parameters
    for number in killed:
        assert trials[number].state == TrialState.FAIL, (number, trials[number].state)
        retries = _retries_of(trials, number)
        assert len(retries) == 1, (number, [r.number for r in retries])
        assert retries[0].params == trials[number].params
    # the retry of trial 0 (the reference recipe) ran and met the target; nothing ran twice
    retry0 = _retries_of(trials, 0)[0]
    assert retry0.state == TrialState.COMPLETE and retry0.user_attrs["retry_of"] == 0
    met = int(study.user_attrs["target_met_by"])
    assert trials[met].value is not None and trials[met].value >= target
    assert max(t.value for t in trials if t.value is not None and t.state == TrialState.COMPLETE) == pytest.approx(single_best)
    runs = [t for t in trials if t.state == TrialState.COMPLETE and "retry_of" in t.user_attrs]
    assert len({t.user_attrs["retry_of"] for t in runs}) == len(runs)
    # every worker stopped at the target: anything started after it was stopped at once (one per live worker)
    done_at = trials[met].datetime_complete
    assert done_at is not None
    late = [t for t in trials if t.datetime_start is not None and t.datetime_start > done_at]
    assert len(late) <= 2 and all(t.state == TrialState.PRUNED and "stopped" in t.user_attrs for t in late), late
    # each worker wrote the best model, replaying it when another process ran it
    for name in ("fourth", "fifth"):
        assert (tmp / name / "best" / "summary.json").exists()


@pytest.mark.slow
def test_postgres_workers_kill_retry_resume(
    postgres_url: str, digits_cache: Path, single_process_best: float, tmp_path: Path
) -> None:
    _kill_retry_resume(tmp_path, postgres_url, digits_cache, single_process_best)


@pytest.mark.slow
def test_journal_workers_kill_retry_resume(digits_cache: Path, single_process_best: float, tmp_path: Path) -> None:
    _kill_retry_resume(tmp_path, str(tmp_path / "study.log"), digits_cache, single_process_best)
