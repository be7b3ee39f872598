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

A technique that needs more than that says so in its spec, with optional hooks, never with code
elsewhere: ``parse_section`` (its YAML section is not a set of dimensions), ``suggest`` (its config is
not ``config_class(**values)``), ``run`` (it is not a plain ``apply`` call), ``describe_config`` (its
label in records), ``usable`` (whether a space and setting can run it at all), ``run_kwargs`` (extra
keyword arguments of ``apply``, taken from the search's run context).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any, Literal

from .._errors import InvalidInputError

__all__ = ["Dimension", "SuggestContext", "TechniqueSpec", "register_technique", "registered_techniques"]

#: How expensive a technique is, cheapest first (``free``: no data; ``data``: passes over calibration
#: batches; ``optimizing``: per-layer optimization; ``eval``: calls the eval callback).
COST_CLASSES = ("free", "data", "optimizing", "eval")


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One search dimension of a technique: YAML key ``<space_key>.<name>``, trial parameter ``<key>__<name>``.

    ``kind`` is ``int``, ``float``, ``bool`` or ``str``; numeric values must lie in ``[low, high]``;
    every value is also checked against the config's declared constraint of the field of that name.
    """

    name: str
    kind: type
    default: Any
    low: float | None = None
    high: float | None = None
    doc: str = ""


@dataclasses.dataclass(frozen=True)
class SuggestContext:
    """What a technique's ``suggest`` hook gets: the trial, its section of the space, the search's settings.

    Attributes:
        key: the technique's key (trial parameters are ``<key>__<name>``).
        section: the technique's section of the search space (a mapping of dimension specs, or what
            its ``parse_section`` hook returned).
        space: the whole search space.
        param_bw / output_bw: the study's default bit-widths.
        num_batches_available: calibration batches the search holds.
        fixed: what the user fixed for this technique (``AutoQuant``'s settings), or ``None``.
        scale_iterations: the search's effort schedule for iterative techniques (iterations for
            ``param_bw``-bit weights, given the count the space declares).
        early_stop_patience: the search's early-stop patience for iterative techniques.
        draw_param: ``draw_param(name, spec) -> value``: the search's define-by-run call (an Optuna
            ``suggest_*`` for a range or a choice, the value itself when fixed).
    """

    key: str
    section: Any
    space: Any
    param_bw: int
    output_bw: int
    num_batches_available: int
    draw_param: Callable[[str, Any], Any]
    fixed: Any = None
    scale_iterations: Callable[[int], int] = int
    early_stop_patience: int = 0

    def draw(self, name: str, spec: Any = None) -> Any:
        """The trial's value of ``<key>__<name>``, from ``spec`` or the section's dimension ``name``."""
        return self.draw_param(f"{self.key}__{name}", self.section[name] if spec is None else spec)

    def clamp_batches(self, n: Any) -> int:
        """``n`` batches, at least 1 and at most the batches available."""
        return max(1, min(int(n), self.num_batches_available))


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
        in_every_space: its section is part of every parsed space (with defaults when absent), and so of
            the space's fingerprint; otherwise only when the YAML has it or an ordering uses it.
        config_classes: further config classes its stages may carry (reloading reads them too).
        parse_section: ``parse_section(raw, where) -> section``: reads its YAML section when that is not
            a set of dimensions; ``where.error(key, message)`` makes the error naming file and key.
        section_to_yaml: ``section_to_yaml(section) -> dict``: the inverse, for ``SearchSpace.to_dict``.
        suggest: ``suggest(ctx: SuggestContext) -> config`` (default: one ``<key>__<dim>`` parameter
            per dimension, then ``build``).
        run: ``run(ctx, state, stage) -> None``: runs a stage the default cannot (``acts_on="scheme"``;
            a sim technique that needs more than ``apply``); it sets the fields of the run's state.
        run_kwargs: ``{apply keyword: run-context attribute}`` passed to ``apply`` (e.g. a cache).
        describe_config: ``describe_config(config) -> str``: its label in pipelines and records
            (default: ``key(dim=value ...)`` for the dimensions off their defaults).
        usable: ``usable(space, param_bw, output_bw, fixed) -> bool``: orderings with it are dropped when False.
        prune_before: trials may be pruned on the scores of stages before it (False: it can recover any
            score before it, so those scores say little about where the trial ends).
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
    in_every_space: bool = False
    config_classes: tuple[type, ...] = ()
    parse_section: Callable[[Mapping[str, Any], Any], Any] | None = None
    section_to_yaml: Callable[[Any], dict[str, Any]] | None = None
    suggest: Callable[[SuggestContext], Any] | None = None
    run: Callable[..., None] | None = None
    run_kwargs: Mapping[str, str] = dataclasses.field(default_factory=dict)
    describe_config: Callable[[Any], str] | None = None
    usable: Callable[..., bool] | None = None
    prune_before: bool = True

    def __post_init__(self) -> None:
        if self.acts_on not in ("model", "scheme", "sim"):
            raise InvalidInputError(
                f"The 'acts_on' parameter of TechniqueSpec must be 'model', 'scheme' or 'sim'. Got {self.acts_on!r} instead."
            )
        if self.cost not in COST_CLASSES:
            raise InvalidInputError(
                f"The 'cost' parameter of TechniqueSpec must be one of {', '.join(COST_CLASSES)}. Got {self.cost!r} instead."
            )
        if self.apply is None and self.run is None:
            raise InvalidInputError(
                f"TechniqueSpec {self.key!r} needs an 'apply' function or a 'run' hook: the search could not run it."
            )
        if not self.space_key:
            object.__setattr__(self, "space_key", self.key)
        if not self.meta_key:
            object.__setattr__(self, "meta_key", self.key)

    @property
    def has_section(self) -> bool:
        """Whether a search space has a section for it (its dimensions, or its own parser)."""
        return bool(self.dimensions) or self.parse_section is not None

    def build(self, values: Mapping[str, Any]) -> Any:
        """The config for the values of its dimensions (a generic technique's define-by-run step)."""
        return self.config_class(**values)

    def describe(self, config: Any) -> str:
        """Its label for ``config``: the ``describe_config`` hook, else ``key(name=value, ...)`` for the
        values that differ from the dimensions' defaults."""
        if self.describe_config is not None:
            return self.describe_config(config)
        shown = [
            f"{d.name}={getattr(config, d.name):.3g}"
            if isinstance(getattr(config, d.name), float)
            else f"{d.name}={getattr(config, d.name)}"
            for d in self.dimensions
            if hasattr(config, d.name) and getattr(config, d.name) != d.default
        ]
        return f"{self.key}({', '.join(shown)})" if shown else self.key


_REGISTRY: dict[str, TechniqueSpec] = {}
_SEARCH_MODULES = ("aq_search.search._scheme", "aq_search.search._ampstage")  # register scheme and amp


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
