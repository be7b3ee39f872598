"""A content-addressed store for technique results (AdaRound roundings): tensors only, no pickle.

The caller creates the cache and passes it to the technique; the technique computes the key from
everything its result depends on and never touches files itself.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Mapping
from typing import Protocol

import torch
from torch import Tensor

from .._constraints import parameter_error
from .._errors import InvalidInputError

__all__ = ["AdaRoundCache", "TensorCache"]

logger = logging.getLogger(__name__)

_KEY = re.compile(r"[0-9a-f]{16,128}")


class TensorCache(Protocol):
    """What a technique needs from a cache: tensors in and out by a content key (a hex digest)."""

    def get(self, key: str) -> dict[str, Tensor] | None: ...

    def put(self, key: str, tensors: Mapping[str, Tensor]) -> None: ...


class AdaRoundCache:
    """Results stored as ``<directory>/<key[:2]>/<key>.pt``, written with ``torch.save`` and read with
    ``torch.load(weights_only=True)`` (a dict of tensors; nothing else is accepted).

    Writes are atomic (a temporary file in the same folder, then ``os.replace``), so concurrent
    processes sharing the folder see either a whole entry or none. An unreadable entry is a miss.

    Args:
        directory: the folder (created on first write). The caller chooses it; there is no default.

    Example:
        >>> import tempfile, torch
        >>> cache = AdaRoundCache(tempfile.mkdtemp())
        >>> cache.put("ab" * 32, {"rounding": torch.zeros(3, dtype=torch.uint8)})
        >>> cache.get("ab" * 32)["rounding"].tolist()
        [0, 0, 0]
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        if not isinstance(directory, (str, os.PathLike)):
            raise parameter_error("directory", "AdaRoundCache", "a path (str or os.PathLike)", directory)
        self.directory = os.fspath(directory)
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> str:
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise InvalidInputError(f"A cache key must be a lowercase hex digest (16 to 128 characters). Got {key!r} instead.")
        return os.path.join(self.directory, key[:2], f"{key}.pt")

    def get(self, key: str) -> dict[str, Tensor] | None:
        """The tensors stored under ``key``, or None (missing or unreadable entry)."""
        path = self._path(key)
        if not os.path.exists(path):
            self.misses += 1
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - a damaged entry is a miss, never a crash
            logger.warning("AdaRoundCache: ignoring unreadable entry %s (%s: %s)", path, type(err).__name__, err)
            self.misses += 1
            return None
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in data.items()):
            logger.warning("AdaRoundCache: ignoring entry %s: not a dict of tensors", path)
            self.misses += 1
            return None
        self.hits += 1
        return data

    def put(self, key: str, tensors: Mapping[str, Tensor]) -> None:
        """Store ``tensors`` under ``key`` (atomically; an existing entry is replaced)."""
        path = self._path(key)
        if not isinstance(tensors, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in tensors.items()):
            raise InvalidInputError("AdaRoundCache.put stores a mapping of str -> torch.Tensor only.")
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:8]}-", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, fh)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def __len__(self) -> int:
        if not os.path.isdir(self.directory):
            return 0
        return sum(
            1
            for sub in os.listdir(self.directory)
            if os.path.isdir(os.path.join(self.directory, sub))
            for name in os.listdir(os.path.join(self.directory, sub))
            if name.endswith(".pt")
        )

    def __repr__(self) -> str:
        return f"AdaRoundCache({self.directory!r})"
