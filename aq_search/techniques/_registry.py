"""The technique registry: what the rest of the code needs to know about each technique, declared once.

A technique registers itself beside its config and apply function (torchao's handler registration)::

    register_technique(TechniqueSpec(key="bnf", config_class=BatchNormFoldConfig, apply=fold_all_batch_norms,
                                     acts_on="model", reapply_on_load=True, cost="free"))

Space parsing, ordering rules, pipeline building and description, result loading and the records
read :func:`registered_techniques`; none of them lists techniques by hand. A technique with
``generic=True`` needs no code elsewhere at all: its YAML section is parsed from ``dimensions``, its
trial parameters are ``<key>__<dimension>``, its config is ``config_class(**values)``, and it runs as
``apply(model, dummy_input, config)`` (``acts_on="model"``) or
``apply(sim, batches, config, forward_fn=...)`` (``acts_on="sim"``).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any, Literal

from .._errors import InvalidInputError

__all__ = ["Dimension", "TechniqueSpec", "register_technique", "registered_techniques"]

#: How expensive a technique is, cheapest first (``free``: no data; ``data``: passes over calibration
#: batches; ``optimizing``: per-layer optimization; ``eval``: calls the eval callback).
COST_CLASSES = ("free", "data", "optimizing", "eval")


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One search dimension of a technique: YAML key ``<space_key>.<name>``, trial parameter ``<key>__<name>``.

    ``kind`` is ``int``, ``float`` or ``bool``; numeric values must lie in ``[low, high]``.
    """

    name: str
    kind: type
    default: Any
    low: float | None = None
    high: float | None = None
    doc: str = ""


@dataclasses.dataclass(frozen=True)
class TechniqueSpec:
    """A registered technique.

    Attributes:
        key: its id in an ordering (``"bnf>cle>adaround"``).
        config_class: its frozen config dataclass.
        apply: its apply function (``None`` when the search runs it itself: ``scheme``, ``amp``).
        acts_on: ``"model"`` (changes the float model; runs before the sim exists), ``"scheme"``
            (chooses the sim's range setting) or ``"sim"`` (changes a calibrated sim).
        description: one line, shown in error messages and docs.
        requires: keys that must be in the ordering, before it.
        after: keys that, when in the ordering, must come before it.
        reapply_on_load: loading a saved result must run it again (it changes the graph, not only values).
        dimensions: its search dimensions (names, ranges, defaults).
        cost: one of :data:`COST_CLASSES`.
        space_key: its section in a search-space YAML (default: ``key``).
        generic: space parsing, suggestion and running come from this spec alone.
        meta_key: where its report goes in ``model.meta["aq_search"]`` (default: ``key``).
    """

    key: str
    config_class: type
    apply: Callable[..., Any] | None
    acts_on: Literal["model", "scheme", "sim"]
    description: str
    requires: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    reapply_on_load: bool = False
    dimensions: tuple[Dimension, ...] = ()
    cost: str = "data"
    space_key: str = ""
    generic: bool = False
    meta_key: str = ""

    def __post_init__(self) -> None:
        if self.acts_on not in ("model", "scheme", "sim"):
            raise InvalidInputError(
                f"The 'acts_on' parameter of TechniqueSpec must be 'model', 'scheme' or 'sim'. Got {self.acts_on!r} instead."
            )
        if self.cost not in COST_CLASSES:
            raise InvalidInputError(
                f"The 'cost' parameter of TechniqueSpec must be one of {', '.join(COST_CLASSES)}. Got {self.cost!r} instead."
            )
        if not self.space_key:
            object.__setattr__(self, "space_key", self.key)
        if not self.meta_key:
            object.__setattr__(self, "meta_key", self.key)

    def build(self, values: Mapping[str, Any]) -> Any:
        """The config for the values of its dimensions (a generic technique's define-by-run step)."""
        return self.config_class(**values)

    def describe(self, config: Any) -> str:
        """``key(name=value, ...)`` for the values that differ from the dimensions' defaults."""
        shown = [
            f"{d.name}={getattr(config, d.name):.3g}"
            if isinstance(getattr(config, d.name), float)
            else f"{d.name}={getattr(config, d.name)}"
            for d in self.dimensions
            if hasattr(config, d.name) and getattr(config, d.name) != d.default
        ]
        return f"{self.key}({', '.join(shown)})" if shown else self.key


_REGISTRY: dict[str, TechniqueSpec] = {}
_SEARCH_MODULES = ("aq_search.search._pipeline", "aq_search.search._ampstage")  # register scheme and amp


def register_technique(spec: TechniqueSpec) -> TechniqueSpec:
    """Register ``spec`` (once per key; registering the same key again replaces it, for reloads)."""
    if not isinstance(spec, TechniqueSpec):
        raise InvalidInputError(f"register_technique needs a TechniqueSpec. Got {type(spec).__name__} instead.")
    _REGISTRY[spec.key] = spec
    return spec


def registered_techniques() -> Mapping[str, TechniqueSpec]:
    """Every registered technique by key (importing the technique modules first, so each has registered)."""
    from .. import techniques

    for info in pkgutil.iter_modules(techniques.__path__):
        importlib.import_module(f"{techniques.__name__}.{info.name}")
    for name in _SEARCH_MODULES:
        importlib.import_module(name)
    return dict(_REGISTRY)
