"""Tasks: an import path to a function that builds :class:`AutoQuant`'s arguments, so any process can rebuild them."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Mapping
from typing import Any

from .._errors import InvalidInputError

__all__ = ["load_task"]


def _import_file(path: str) -> Any:
    full = os.path.abspath(path)
    if not os.path.isfile(full):
        raise InvalidInputError(f"task file {path!r} does not exist.")
    name = f"aq_search_task_{hashlib.sha256(full.encode()).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, full)
    if spec is None or spec.loader is None:
        raise InvalidInputError(f"task file {path!r} cannot be imported as a Python module.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_task(spec: str) -> dict[str, Any]:
    """Call a task's build function and check what it returns.

    Args:
        spec: ``package.module:build`` or ``path/to/file.py:build``. ``build()`` takes no arguments
            and returns a dict of :class:`~aq_search.AutoQuant` keyword arguments (``model``,
            ``dummy_input``, ``data_loader``, ``eval_callback``, ``param_bw``, ``output_bw``,
            ``search_space``, ``seed``, ...). Every worker calls it, on its own machine, so it must
            build the same model, data and evaluation each time.

    Returns:
        The keyword arguments.

    Example:
        >>> kwargs = load_task("aq_search.examples.digits:build_task")  # doctest: +SKIP
        >>> AutoQuant(**kwargs).optimize(allowed_accuracy_drop=0.01)  # doctest: +SKIP
    """
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr.isidentifier():
        raise InvalidInputError(
            f"a task is 'package.module:function' or 'path/to/file.py:function'. Got {spec!r} instead."
        )
    if module_part.endswith(".py") or os.sep in module_part or "/" in module_part:
        module = _import_file(module_part)
    else:
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as err:
            raise InvalidInputError(f"task {spec!r}: cannot import module {module_part!r} ({err}).") from err
    build = getattr(module, attr, None)
    if not callable(build):
        raise InvalidInputError(f"task {spec!r}: module {module_part!r} has no function {attr!r}.")
    kwargs = build()
    if not isinstance(kwargs, Mapping):
        raise InvalidInputError(
            f"task {spec!r}: {attr}() must return a dict of AutoQuant keyword arguments. Got {type(kwargs).__name__} instead."
        )
    from ._autoquant import AutoQuant

    accepted = set(inspect.signature(AutoQuant.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise InvalidInputError(
            f"task {spec!r}: {attr}() returned keys AutoQuant does not take: {', '.join(unknown)} "
            f"(it takes {', '.join(sorted(accepted))})."
        )
    missing = [k for k in ("model", "dummy_input", "data_loader", "eval_callback") if k not in kwargs]
    if missing:
        raise InvalidInputError(f"task {spec!r}: {attr}() must return {', '.join(missing)} too.")
    return dict(kwargs)
