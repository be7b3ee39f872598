"""Provenance for benchmark tables: machine, date, thread settings and the exact aq-search source measured."""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def source_state() -> str:
    """``<commit>`` of the repository, plus a digest of uncommitted changes under ``aq_search/`` when there are any."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    diff = git("diff", "HEAD", "--", "aq_search", "search_spaces")
    if not diff:
        return f"commit {commit}"
    return f"commit {commit} + uncommitted aq_search changes (diff sha256 {hashlib.sha256(diff.encode()).hexdigest()[:10]})"


def machine() -> str:
    return f"{os.cpu_count()} CPU cores ({platform.machine()}), no GPU, {platform.system()}"


def now() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
