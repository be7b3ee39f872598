"""Study storage for one or many worker processes: RDB URLs with heartbeats, or a journal file.

* An RDB URL (``sqlite:///...``, ``postgresql://...``, ``mysql://...``) becomes an
  :class:`optuna.storages.RDBStorage` with Optuna's heartbeat: every running trial records a
  heartbeat every ``heartbeat_interval`` seconds; a trial whose heartbeat is older than
  ``grace_period`` (its worker was killed, its node lost) is marked ``FAIL`` by the next worker that
  starts a trial, and :class:`optuna.storages.RetryHeartbeatStaleTrialCallback` enqueues a copy with
  the same parameters (system attributes ``failed_trial`` and ``retry_history`` name the original).
* A path ending in ``.log`` becomes an :class:`optuna.storages.journal.JournalStorage` on a
  :class:`~optuna.storages.journal.JournalFileBackend` (no server). Optuna 5.0 has no heartbeat for
  journal storages, so a killed worker's trial would stay ``RUNNING`` forever. Journal storage is our
  one-machine option, so workers detect dead workers on their own host instead: every trial records
  its worker as ``host:pid`` (user attribute ``worker``), and before each trial a worker fails the
  ``RUNNING`` trials of this host whose process no longer exists and retries them with the same
  Optuna callback as above. Trials of workers on other hosts are never touched (use PostgreSQL there).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from .._errors import InvalidInputError

__all__ = [
    "WORKER_ATTR",
    "check_storage_spec",
    "fail_dead_local_trials",
    "make_storage",
    "storage_label",
    "worker_id",
]

logger = logging.getLogger(__name__)

WORKER_ATTR = "worker"


def worker_id() -> str:
    """``host:pid`` of this process, as recorded in each trial's ``worker`` user attribute."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _retry_callback(max_retries: int | None) -> RetryHeartbeatStaleTrialCallback:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=max_retries)


def is_journal_path(storage: Any) -> bool:
    return isinstance(storage, (str, os.PathLike)) and "://" not in os.fspath(storage) and os.fspath(storage).endswith(".log")


def check_storage_spec(storage: Any) -> None:
    """Raise :class:`InvalidInputError` unless ``storage`` is a URL/path string, a path or an Optuna storage."""
    if not isinstance(storage, (str, os.PathLike, BaseStorage)):
        raise InvalidInputError(
            "The 'storage' parameter must be an Optuna RDB URL, a path ending in .log or an optuna storage. "
            f"Got {type(storage).__name__} instead."
        )


def make_storage(
    storage: str | os.PathLike[str] | BaseStorage,
    *,
    heartbeat_interval: int | None = 60,
    grace_period: int | None = None,
    max_retries: int | None = 2,
) -> BaseStorage:
    """An Optuna storage for ``storage``: an RDB URL, a ``.log`` journal path, or a storage object as is.

    Args:
        storage: ``sqlite:///study.db``, ``postgresql://user:pw@host/db``, ``path/study.log`` or a
            :class:`optuna.storages.BaseStorage` (returned unchanged).
        heartbeat_interval: seconds between heartbeats of a running trial (RDB URLs but in-memory
            SQLite); ``None`` turns heartbeats, and so the retry of killed workers' trials, off.
        grace_period: seconds without a heartbeat after which a trial counts as dead (default
            Optuna's, ``2 * heartbeat_interval``).
        max_retries: how many times one trial is retried after its worker died (``None``: no limit).
    """
    check_storage_spec(storage)
    if isinstance(storage, BaseStorage):
        return storage
    text = os.fspath(storage)
    if is_journal_path(text):
        return JournalStorage(JournalFileBackend(text))
    if "://" not in text:
        raise InvalidInputError(
            "The 'storage' parameter must be an Optuna RDB URL (sqlite:///study.db, postgresql://user@host/db) "
            f"or a path ending in .log (a JournalStorage file). Got {text!r} instead."
        )
    in_memory = text.startswith("sqlite") and (text.rstrip("/") == "sqlite:" or ":memory:" in text)
    if heartbeat_interval is None or in_memory:  # an in-memory database has no other process, and no other thread
        return _rdb_storage(text, {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _rdb_storage(
            text,
            {
                "heartbeat_interval": heartbeat_interval,
                "grace_period": grace_period,
                "heartbeat_stale_trial_callback": _retry_callback(max_retries),
            },
        )


#: What SQLite/PostgreSQL say when two processes create (or stamp the version of) the same new schema.
_CREATION_RACE = ("already exists", "duplicate key", "UNIQUE constraint failed")


def _rdb_storage(url: str, kwargs: dict[str, Any], attempts: int = 5) -> RDBStorage:
    """``RDBStorage(url, **kwargs)``, retried when another worker creates the same new database's tables
    at the same moment (SQLAlchemy's ``create_all`` and Alembic's version stamp are not atomic across
    processes: "table ... already exists", "UNIQUE constraint failed: alembic_version...")."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(attempts):
        try:
            return RDBStorage(url, **kwargs)
        except (OperationalError, ProgrammingError, IntegrityError) as err:  # PostgreSQL: "duplicate key ... pg_type"
            if not any(m in str(err) for m in _CREATION_RACE) or attempt == attempts - 1:
                raise
            logger.debug("another worker is creating the study tables; retrying (%s)", err)
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def storage_label(storage: Any) -> str:
    """A printable name for a storage (URL without password, journal path, or class name)."""
    if isinstance(storage, (str, os.PathLike)):
        text = os.fspath(storage)
        if "://" in text:
            from sqlalchemy.engine import make_url
            from sqlalchemy.exc import ArgumentError

            try:
                return make_url(text).render_as_string(hide_password=True)
            except (ArgumentError, ValueError):  # not a URL sqlalchemy understands: show it as given
                return text
        return text
    if isinstance(storage, RDBStorage):
        return storage_label(storage.url)
    return type(storage).__name__


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _claimed_worker(trial: FrozenTrial, trials: list[FrozenTrial]) -> str | None:
    """The worker that runs ``trial``; ``None`` while a retry still carries its predecessor's copy."""
    worker = trial.user_attrs.get(WORKER_ATTR)
    history = trial.system_attrs.get("retry_history") or []
    if worker is None or (history and history[-1] < len(trials) and trials[history[-1]].user_attrs.get(WORKER_ATTR) == worker):
        return None
    return str(worker)


def fail_dead_local_trials(study: optuna.Study, storage: BaseStorage, max_retries: int | None) -> list[int]:
    """Journal storages only: fail and retry the ``RUNNING`` trials whose worker on this host is gone.

    The stand-in for Optuna's heartbeat, which journal storages lack: a trial records its worker as
    ``host:pid``; when that process no longer exists on this host, the trial is marked ``FAIL`` (only
    one worker wins that update) and the winner enqueues a retry with the same parameters through
    :class:`optuna.storages.RetryHeartbeatStaleTrialCallback`. Returns the numbers of the trials failed.
    """
    if not isinstance(storage, JournalStorage):
        return []
    host = socket.gethostname()
    trials = study.get_trials(deepcopy=False)
    failed = []
    for trial in trials:
        if trial.state != TrialState.RUNNING:
            continue
        worker = _claimed_worker(trial, trials)
        if worker is None:
            continue
        worker_host, _, pid = worker.rpartition(":")
        if worker_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker failed it first (and retries it)
        logger.warning("trial %d: its worker %s is gone; marked FAIL and retried", trial.number, worker)
        failed.append(trial.number)
        _retry_callback(max_retries)(study, study.get_trials(deepcopy=True)[trial.number])
    return failed
