"""A throwaway PostgreSQL cluster on 127.0.0.1, for the multi-worker tests and the storage benchmark.

``initdb`` into a temporary folder, ``pg_ctl start`` on a free port, one database; removed on exit.
As root, the cluster runs as the ``postgres`` user (initdb refuses root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["PostgresUnavailable", "throwaway_postgres"]


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries, no psycopg2, or the cluster would not start (the reason is the message)."""


def _bindir() -> str | None:
    def version(path: str) -> int:
        part = path.split("/")[-3]
        return int(part) if part.isdigit() else 0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Yields a SQLAlchemy URL ``postgresql+psycopg2://aqtest@127.0.0.1:PORT/aq``; raises PostgresUnavailable."""
    try:
        import psycopg2
    except ImportError as err:
        raise PostgresUnavailable("psycopg2 is not installed (pip install -e '.[postgres]')") from err
    bindir = _bindir()
    if bindir is None:
        raise PostgresUnavailable("no PostgreSQL server binaries (initdb); .ci/run installs Debian's postgresql")
    prefix: list[str] = []
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError as err:
            raise PostgresUnavailable("running as root and there is no 'postgres' user to own a cluster") from err
        prefix = ["runuser", "-u", "postgres", "--"]
    root = tempfile.mkdtemp(prefix="aq-pg-")
    data = os.path.join(root, "data")
    if owner is not None:
        os.chmod(root, 0o755)
        os.chown(root, owner.pw_uid, owner.pw_gid)
    port = _free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True, timeout=120)

    try:
        try:
            run(f"{bindir}/initdb", "-D", data, "-U", "aqtest", "-A", "trust", "--no-sync")
            options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
            run(f"{bindir}/pg_ctl", "start", "-w", "-D", data, "-l", os.path.join(root, "log"), "-o", options)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
            detail = getattr(err, "stderr", None) or str(err)
            raise PostgresUnavailable(f"could not start a PostgreSQL cluster: {str(detail).strip()[-300:]}") from err
        try:
            conn = psycopg2.connect(host="127.0.0.1", port=port, user="aqtest", dbname="postgres")
            conn.autocommit = True
            conn.cursor().execute("CREATE DATABASE aq")
            conn.close()
            yield f"postgresql+psycopg2://aqtest@127.0.0.1:{port}/aq"
        finally:
            subprocess.run([*prefix, f"{bindir}/pg_ctl", "stop", "-D", data, "-m", "immediate"], capture_output=True, timeout=60)
    finally:
        shutil.rmtree(root, ignore_errors=True)
