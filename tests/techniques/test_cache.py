"""The AdaRound result cache: tensors only, atomic writes, damaged entries are misses."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from aq_search import InvalidInputError
from aq_search.techniques import AdaRoundCache

KEY = "0123456789abcdef" * 4


def test_round_trip_and_layout(tmp_path: Path) -> None:
    cache = AdaRoundCache(tmp_path / "c")
    assert cache.get(KEY) is None and len(cache) == 0
    rounding = torch.randint(0, 2, (4, 3, 3, 3), dtype=torch.uint8)
    cache.put(KEY, {"rounding": rounding})
    got = cache.get(KEY)
    assert got is not None and torch.equal(got["rounding"], rounding) and got["rounding"].dtype == torch.uint8
    assert (tmp_path / "c" / KEY[:2] / f"{KEY}.pt").exists()
    assert [p.name for p in (tmp_path / "c" / KEY[:2]).iterdir()] == [f"{KEY}.pt"]  # no temporary files left
    assert (cache.hits, cache.misses, len(cache)) == (1, 1, 1)


def test_rejects_bad_keys_and_values(tmp_path: Path) -> None:
    cache = AdaRoundCache(tmp_path)
    for key in ("../escape", "ABCDEF0123456789", "short", ""):
        with pytest.raises(InvalidInputError, match="hex digest"):
            cache.get(key)
    with pytest.raises(InvalidInputError, match=re.escape("str -> torch.Tensor")):
        cache.put(KEY, {"rounding": [1, 0]})  # type: ignore[dict-item]
    with pytest.raises(InvalidInputError, match="'directory' parameter of AdaRoundCache"):
        AdaRoundCache(None)  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_damaged_or_foreign_entries_are_misses(tmp_path: Path) -> None:
    cache = AdaRoundCache(tmp_path)
    cache.put(KEY, {"rounding": torch.zeros(2)})
    path = tmp_path / KEY[:2] / f"{KEY}.pt"
    path.write_bytes(b"not a torch file")
    assert cache.get(KEY) is None

    # a pickled object (not plain tensors) is refused by torch.load(weights_only=True)
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("echo pwned",))

    path.write_bytes(pickle.dumps(Evil()))
    assert cache.get(KEY) is None
    torch.save([torch.zeros(1)], path)  # loads, but is not a dict of tensors
    assert cache.get(KEY) is None
