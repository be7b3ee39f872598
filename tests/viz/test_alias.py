"""``aq_search.inspect`` is a deprecated alias of ``aq_search.viz``."""

import importlib
import sys

import pytest

import aq_search.viz as viz


def test_inspect_alias_warns_and_reexports_viz() -> None:
    sys.modules.pop("aq_search.inspect", None)
    with pytest.warns(DeprecationWarning, match=r"aq_search\.viz"):
        old = importlib.import_module("aq_search.inspect")
    assert old.__all__ == viz.__all__
    for name in viz.__all__:
        assert getattr(old, name) is getattr(viz, name), name
