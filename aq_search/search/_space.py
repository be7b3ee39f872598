"""Search spaces: YAML files validated into frozen dataclasses.

A space says which technique orderings the search may try and the range of every tuned setting.
See ``search_spaces/README.md`` for every key. Values take one of three forms:

* a list: a categorical choice (``[tf, tf_enhanced]``),
* a mapping with ``low`` and ``high`` (and optional ``log: true`` / ``step``): a numeric range,
* a plain value: fixed, not searched.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .._errors import SearchSpaceError
from ._ordering import STAGES, validate_ordering
from ._params import Choice, FloatRange, IntRange, ParamSpec, Where, mapping, param, parse_section, section_to_yaml

__all__ = [
    "STAGES",
    "Choice",
    "FloatRange",
    "IntRange",
    "ParamSpec",
    "PrunerSpec",
    "SearchSpace",
    "builtin_spaces",
    "load_search_space",
    "validate_ordering",
]

#: names that moved to the module of the technique they belong to (still importable from here)
_MOVED = {
    "AIMET_SCHEME_CANDIDATES": "_scheme",
    "SELECT_BY": "_scheme",
    "SchemeSpace": "_scheme",
    "AmpSpace": "_ampstage",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class PrunerSpec:
    type: str = "median"
    n_startup_trials: int = 3
    n_warmup_steps: int = 1
    percentile: float = 25.0


def _specs() -> Mapping[str, Any]:
    from ..techniques._registry import registered_techniques

    return registered_techniques()


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space (see ``search_spaces/README.md``).

    ``techniques`` holds the section of every registered technique the space has (by its YAML key:
    ``scheme``, ``cle``, ``bias_correction``, ``adaround``, ``amp`` ..., see
    :class:`~aq_search.techniques.TechniqueSpec`); a section also reads as an attribute
    (``space.adaround.num_iterations``).
    """

    name: str
    orderings: tuple[str, ...]
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    sampler: str = "tpe"
    max_trials: int = 30
    n_startup_trials: int = 4
    intermediate_num_samples: int | None = None
    replay_reference: bool | str = True  # True, False or "aimet" (AIMET's own flow, see _aimet_flow.py)
    max_relative_bops: float = 1.5
    #: ``every``: evaluate after every stage; ``lazy``: not before a cheap stage (see ``search/_screen.py``)
    stage_scoring: str = "every"
    #: output-SQNR gap (dB) under which candidates tie and the eval breaks the tie (0: off; see ``search/_screen.py``)
    proxy_tie_db: float = 0.0
    #: redraws of AdaRound's mini-batches for a best trial that misses within the eval's error (see ``search/_redraw.py``)
    adaround_redraws: int = 0
    description: str = ""
    source: str = "<dict>"
    #: deployment target (``generic``, ``onnxruntime``, ``tensorrt``, ``qnn``; see ``aq_search.targets``)
    target: str | None = None
    #: each registered technique's section (``{space_key: section}``)
    techniques: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("techniques") if not name.startswith("_") else None
        if sections is not None and name in sections:
            return sections[name]
        raise AttributeError(f"search space has no section {name!r}")

    def with_sections(self, **sections: Any) -> SearchSpace:
        """A copy with the given technique sections replaced (``space.with_sections(amp=AmpSpace(...))``)."""
        return replace(self, techniques={**self.techniques, **sections})

    def to_dict(self) -> dict[str, Any]:
        """The space as the plain data it was loaded from (round-trips through :func:`load_search_space`)."""
        by_section = {spec.space_key: spec for spec in _specs().values()}
        extra: dict[str, Any] = {} if self.target is None else {"target": self.target}  # absent: old fingerprints unchanged
        if self.stage_scoring != "every":
            extra["stage_scoring"] = self.stage_scoring
        if self.proxy_tie_db:
            extra["proxy_tie_db"] = self.proxy_tie_db
        if self.adaround_redraws:
            extra["adaround_redraws"] = self.adaround_redraws
        for key, section in self.techniques.items():
            spec = by_section.get(key)
            extra[key] = section_to_yaml(spec, section) if spec is not None else section.to_yaml()
        return {
            **extra,
            "name": self.name,
            "orderings": list(self.orderings),
            "pruner": asdict(self.pruner),
            "sampler": self.sampler,
            "max_trials": self.max_trials,
            "n_startup_trials": self.n_startup_trials,
            "intermediate_num_samples": self.intermediate_num_samples,
            "replay_reference": self.replay_reference,
            "max_relative_bops": self.max_relative_bops,
            "description": self.description,
        }

    def fingerprint(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


#: the keys of a space besides the technique sections (those come from the registry)
_TOP_KEYS = {
    "name",
    "description",
    "orderings",
    "pruner",
    "sampler",
    "max_trials",
    "n_startup_trials",
    "intermediate_num_samples",
    "replay_reference",
    "max_relative_bops",
    "target",
    "stage_scoring",
    "proxy_tie_db",
    "adaround_redraws",
}


# -- parsing --------------------------------------------------------------------------------------


def _parse(data: Any, source: str) -> SearchSpace:
    where = Where(source)
    sectioned = {spec.space_key: spec for spec in _specs().values() if spec.has_section}
    top = mapping(data, "", where, _TOP_KEYS | set(sectioned))
    orderings_raw = top.get("orderings")
    if not isinstance(orderings_raw, (list, tuple)) or not orderings_raw:
        raise where.error("orderings", "must be a non-empty list of orderings like 'bnf>cle>adaround'.")
    orderings: list[str] = []
    for i, o in enumerate(orderings_raw):
        try:
            stages = validate_ordering(o)
        except SearchSpaceError as err:
            raise where.error(f"orderings[{i}]", str(err)) from None
        orderings.append(">".join(stages))
    used = {k for o in orderings for k in o.split(">")}
    sections = {
        space_key: parse_section(spec, top.get(space_key), where)
        for space_key, spec in sectioned.items()
        if spec.in_every_space or space_key in top or spec.key in used
    }

    pr = mapping(top.get("pruner"), "pruner", where, {"type", "n_startup_trials", "n_warmup_steps", "percentile"})
    ptype = pr.get("type", "median")
    if ptype not in ("none", "median", "percentile"):
        raise where.error("pruner.type", f"must be none, median or percentile. Got {ptype!r} instead.")
    pruner = PrunerSpec(
        type=ptype,
        n_startup_trials=int(param(pr.get("n_startup_trials", 3), "pruner.n_startup_trials", where, int, 0, 10_000).to_yaml()),
        n_warmup_steps=int(param(pr.get("n_warmup_steps", 1), "pruner.n_warmup_steps", where, int, 0, 100).to_yaml()),
        percentile=float(param(pr.get("percentile", 25.0), "pruner.percentile", where, float, 0.0, 100.0).to_yaml()),
    )
    sampler = top.get("sampler", "tpe")
    if sampler not in ("tpe", "random"):
        raise where.error("sampler", f"must be tpe or random. Got {sampler!r} instead.")

    def positive_int(key: str, default: int | None, allow_none: bool = False) -> int | None:
        v = top.get(key, default)
        if v is None and allow_none:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if key == "n_startup_trials" else 1):
            raise where.error(key, f"must be a positive integer{' or null' if allow_none else ''}. Got {v!r} instead.")
        return v

    replay = top.get("replay_reference", True)
    if not isinstance(replay, bool) and replay != "aimet":
        raise where.error("replay_reference", f"must be true, false or 'aimet'. Got {replay!r} instead.")
    max_bops = top.get("max_relative_bops", 1.5)
    if isinstance(max_bops, bool) or not isinstance(max_bops, (int, float)) or not max_bops >= 1.0 or max_bops == float("inf"):
        raise where.error("max_relative_bops", f"must be a number >= 1. Got {max_bops!r} instead.")
    stage_scoring = top.get("stage_scoring", "every")
    if stage_scoring not in ("every", "lazy"):
        raise where.error("stage_scoring", f"must be every or lazy. Got {stage_scoring!r} instead.")
    tie_db = top.get("proxy_tie_db", 0.0)
    if isinstance(tie_db, bool) or not isinstance(tie_db, (int, float)) or not 0.0 <= tie_db <= 20.0:
        raise where.error("proxy_tie_db", f"must be a number of dB from 0 (off) to 20. Got {tie_db!r} instead.")
    redraws = top.get("adaround_redraws", 0)
    if isinstance(redraws, bool) or not isinstance(redraws, int) or not 0 <= redraws <= 10:
        raise where.error("adaround_redraws", f"must be an integer from 0 (off) to 10. Got {redraws!r} instead.")
    target = top.get("target")
    if target is not None:
        from ..targets import TARGETS

        if not isinstance(target, str) or target not in TARGETS:
            raise where.error("target", f"must be one of {', '.join(TARGETS)}. Got {target!r} instead.")
    name = top.get("name", Path(source).stem if source != "<dict>" else "custom")
    if not isinstance(name, str):
        raise where.error("name", "must be a string.")
    space = SearchSpace(
        name=name,
        orderings=tuple(orderings),
        pruner=pruner,
        sampler=sampler,
        max_trials=positive_int("max_trials", 30) or 30,
        n_startup_trials=positive_int("n_startup_trials", 4) or 0,
        intermediate_num_samples=positive_int("intermediate_num_samples", None, allow_none=True),
        replay_reference=replay,
        max_relative_bops=float(max_bops),
        stage_scoring=stage_scoring,
        proxy_tie_db=float(tie_db),
        adaround_redraws=redraws,
        description=str(top.get("description", "")),
        source=source,
        target=target,
        techniques=sections,
    )
    return space


def _builtin_dir() -> Path:
    return Path(str(resources.files("aq_search") / "search_spaces"))


def builtin_spaces() -> dict[str, Path]:
    """Built-in spaces by name (``default``, ``fast``, ``thorough`` ...)."""
    d = _builtin_dir()
    return {p.stem: p for p in sorted(d.glob("*.yaml"))}


def load_search_space(space: str | os.PathLike[str] | Mapping[str, Any] | SearchSpace) -> SearchSpace:
    """Load a built-in space by name, a YAML file by path, or validate a dict.

    Raises:
        SearchSpaceError: unknown name or missing file, invalid YAML, an unknown key or a bad
            value (the message names the file and the key).
    """
    if isinstance(space, SearchSpace):
        return space
    if isinstance(space, Mapping):
        return _parse(space, "<dict>")
    if not isinstance(space, (str, os.PathLike)):
        raise SearchSpaceError(f"search_space must be a name, a path or a dict. Got {type(space).__name__} instead.")
    text = os.fspath(space)
    builtins = builtin_spaces()
    if text in builtins:
        path = builtins[text]
    else:
        path = Path(text)
        if not path.exists():
            raise SearchSpaceError(
                f"search space {text!r} is neither a built-in name ({', '.join(builtins)}) nor an existing file."
            )
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # a SafeLoader (below)
    except yaml.YAMLError as err:
        raise SearchSpaceError(f"search space {path}: invalid YAML: {err}") from None
    return _parse(data, str(path))


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key given twice in one mapping (plain YAML keeps the last, silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (remove one of them)", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
