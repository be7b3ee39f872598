"""Deprecated alias of :mod:`aq_search.viz` (the old name shadowed the standard library's ``inspect``).

Import from :mod:`aq_search.viz` instead; every public name of :mod:`aq_search.viz` is still reachable here,
and this module will be removed.
"""

import warnings
from typing import Any

from .. import viz as _viz

__all__ = list(_viz.__all__)

warnings.warn(
    "aq_search.inspect is deprecated and will be removed; import from aq_search.viz instead "
    "(the old name shadowed the standard library's inspect module).",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str) -> Any:
    if name in _viz.__all__:
        return getattr(_viz, name)
    raise AttributeError(f"module 'aq_search.inspect' has no attribute {name!r} (it is a deprecated alias of aq_search.viz)")
