"""The quantsim package after its split: small modules, and the names other code imported still import."""

from __future__ import annotations

from pathlib import Path

import aq_search.quantsim as quantsim


def test_no_quantsim_module_is_over_500_lines() -> None:
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in Path(quantsim.__file__).parent.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 500} == {}


def test_names_imported_from_prepare_still_import() -> None:
    from aq_search.quantsim import _functional, _layers, _trace
    from aq_search.quantsim._prepare import (  # the names other modules (and branches) import from here
        _KNOWN_LEAVES,
        BATCHNORMS,
        FUSABLE_ACTIVATIONS,
        FUSABLE_PRODUCERS,
        PASSTHROUGH_LAYERS,
        WEIGHT_LAYERS,
        _is_data_movement,
        _scope,
        is_prepared,
        prepare_model,
        propagate_shapes,
    )

    assert _KNOWN_LEAVES is _layers.KNOWN_LEAVES and BATCHNORMS is _layers.BATCHNORMS
    assert (FUSABLE_ACTIVATIONS, FUSABLE_PRODUCERS, PASSTHROUGH_LAYERS, WEIGHT_LAYERS) == (
        _layers.FUSABLE_ACTIVATIONS,
        _layers.FUSABLE_PRODUCERS,
        _layers.PASSTHROUGH_LAYERS,
        _layers.WEIGHT_LAYERS,
    )
    assert _scope is _functional.node_scope and _is_data_movement is _functional.is_data_movement
    assert propagate_shapes is _trace.propagate_shapes
    assert callable(is_prepared) and callable(prepare_model)
