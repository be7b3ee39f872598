"""PTQ techniques: BatchNorm folding, cross-layer equalization, AdaRound, bias correction.

Each technique is a frozen config dataclass (validated on construction, ``to_dict`` / ``from_dict``
by allowlist) plus one apply function. None calls another, none writes files (AdaRound reads and
writes results only through the cache object the caller passes in).

=========  =========================  ===================================================================
id         config                     apply
=========  =========================  ===================================================================
``bnf``    :class:`BatchNormFoldConfig` ``fold_all_batch_norms(model, dummy_input, config) -> model``
``cle``    :class:`CLEConfig`          ``equalize_model(folded, dummy_input, config) -> model``
``adaround`` :class:`AdaRoundParams`   ``apply_adaround(sim, data_loader, params, *, forward_fn, cache, seed) -> sim``
``bc``     :class:`BiasCorrectionConfig` ``correct_bias(sim, data_loader, config, *, forward_fn) -> sim``
=========  =========================  ===================================================================

The model techniques (``bnf``, ``cle``) take and return a model (a prepared ``torch.fx.GraphModule``)
and run before the :class:`~aq_search.QuantSim` is built; the sim techniques (``adaround``, ``bc``)
modify a calibrated sim in place and return it.

Each technique also registers a :class:`TechniqueSpec` beside its config and function (stage key,
model or sim, what must precede it, whether reloading re-applies it, search dimensions, cost class);
:func:`registered_techniques` returns them, and the search reads nothing else. A new technique with
``generic=True`` is one module (config + function + ``register_technique``) plus its YAML entry; one that
needs more declares hooks in its spec (section parsing, trial suggestion, label, run), never code elsewhere.
"""

from __future__ import annotations

from ._adaround import AdaRoundLayerResult, AdaRoundParams, AdaRoundReport, apply_adaround
from ._bias_correction import BiasCorrectionConfig, BiasCorrectionLayerResult, BiasCorrectionReport, correct_bias
from ._bn_fold import BatchNormFoldConfig, BatchNormFoldReport, FoldedBatchNorm, fold_all_batch_norms
from ._cache import AdaRoundCache, TensorCache
from ._cle import CLEConfig, CLEReport, equalize_model
from ._config import TechniqueConfig
from ._registry import Dimension, TechniqueSpec, register_technique, registered_techniques

__all__ = [
    "AdaRoundCache",
    "AdaRoundLayerResult",
    "AdaRoundParams",
    "AdaRoundReport",
    "BatchNormFoldConfig",
    "BatchNormFoldReport",
    "BiasCorrectionConfig",
    "BiasCorrectionLayerResult",
    "BiasCorrectionReport",
    "CLEConfig",
    "CLEReport",
    "Dimension",
    "FoldedBatchNorm",
    "TechniqueConfig",
    "TechniqueSpec",
    "TensorCache",
    "apply_adaround",
    "correct_bias",
    "equalize_model",
    "fold_all_batch_norms",
    "register_technique",
    "registered_techniques",
]
