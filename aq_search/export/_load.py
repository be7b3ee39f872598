"""Rebuild the best quantized model of a search from its results folder, without searching again.

The folder written by :meth:`aq_search.AutoQuant.optimize` (``<results_dir>/best``) holds:

* ``summary.json``: ``results_version``, the aq-search version, scores, bit-widths ...
* ``pipeline.yaml``: the techniques applied, in order (:meth:`Pipeline.to_dict`);
* ``model_state.pt``: ``sim.model.state_dict()``: the float weights as the techniques left them
  (BatchNorms folded, equalized, bias-corrected) and AdaRound's ``rounding`` buffers;
* ``encodings.json``: every encoding and bit-width (:meth:`QuantSim.export_encodings`).

:func:`load_result` reads them with safe loaders only (``json``, ``yaml.safe_load``,
``torch.load(weights_only=True)``): nothing in the folder can run code.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import yaml
from torch import nn

from .._constraints import parameter_error
from .._data import move_to
from .._device import model_device
from .._errors import InvalidInputError, ResultLoadError
from ..quantsim import QuantSim, prepare_model
from ..quantsim._range import make_range_estimator

__all__ = [
    "RESULT_FILES",
    "SUPPORTED_RESULTS_VERSIONS",
    "LoadedResult",
    "ResultLoadError",
    "load_result",
]

logger = logging.getLogger(__name__)

#: The files :func:`load_result` needs in the results folder.
RESULT_FILES = ("summary.json", "pipeline.yaml", "model_state.pt", "encodings.json")
#: ``results_version`` values this aq-search reads (``summary.json``).
SUPPORTED_RESULTS_VERSIONS = (1,)
_ROUNDING_SUFFIX = ".parametrizations.weight.0.rounding"


@dataclass(frozen=True)
class LoadedResult:
    """A search result rebuilt by :func:`load_result`.

    Attributes:
        sim: the quantized model's :class:`~aq_search.QuantSim` (encodings loaded, AdaRound frozen).
        model: ``sim.model``, the fake-quantized model.
        pipeline: the techniques that produced it (:class:`~aq_search.search.Pipeline`).
        summary: ``summary.json`` as a dict (scores, bit-widths, versions, message ...).
        results_dir: the folder the files were read from.
    """

    sim: QuantSim
    model: fx.GraphModule
    pipeline: Any
    summary: Mapping[str, Any] = field(default_factory=dict)
    results_dir: str = ""

    @property
    def accuracy(self) -> float | None:
        value = self.summary.get("accuracy")
        return float(value) if isinstance(value, (int, float)) else None

    def export_onnx(self, path: str | os.PathLike[str], **kwargs: Any) -> Any:
        """Export the rebuilt model (see :func:`aq_search.export_onnx`); returns an :class:`OnnxExport`."""
        from ._onnx import export_onnx

        dummy = kwargs.pop("dummy_input", None)
        return export_onnx(self.sim, dummy, path, **kwargs)

    def __repr__(self) -> str:
        return f"LoadedResult(accuracy={self.accuracy}, pipeline='{self.pipeline}', results_dir={self.results_dir!r})"


def _folder(results_dir: str | os.PathLike[str]) -> Path:
    if not isinstance(results_dir, (str, os.PathLike)):
        raise parameter_error("results_dir", "load_result", "a folder path", results_dir)
    root = Path(results_dir)
    if not root.is_dir():
        raise ResultLoadError(
            f"results folder {os.fspath(root)!r} does not exist. Fix: pass the results_dir given to AutoQuant "
            "(or its 'best' subfolder)."
        )
    best = root / "best"
    if not (root / "summary.json").exists() and best.is_dir():
        return best
    return root


def _check_files(folder: Path) -> None:
    missing = [name for name in RESULT_FILES if not (folder / name).is_file()]
    if missing:
        present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        raise ResultLoadError(
            f"results folder {os.fspath(folder)!r} is missing {', '.join(missing)} (it has: {', '.join(present) or 'nothing'}). "
            f"A complete folder, as AutoQuant.optimize() writes it, has {', '.join(RESULT_FILES)}. Fix: point load_result "
            "at the folder of a finished search (results_dir or results_dir/best), or run the search again."
        )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ResultLoadError(
            f"{os.fspath(path)!r} is not valid JSON ({err}); the file is damaged. Run the search again."
        ) from None


def _check_version(summary: Any, path: Path) -> None:
    from .._version import __version__

    if not isinstance(summary, Mapping):
        raise ResultLoadError(f"{os.fspath(path)!r} is not a results summary (a JSON object is expected).")
    version = summary.get("results_version")
    if version not in SUPPORTED_RESULTS_VERSIONS:
        written = summary.get("aq_search_version", "an unknown version")
        shown = "none" if version is None else repr(version)
        raise ResultLoadError(
            f"results folder {os.fspath(path.parent)!r} has results_version {shown} (written by aq-search {written}); "
            f"this aq-search ({__version__}) reads results_version {', '.join(str(v) for v in SUPPORTED_RESULTS_VERSIONS)}. "
            f"Fix: load it with aq-search {written}, or run the search again with this version."
        )


def _read_pipeline(path: Path) -> Any:
    from ..search import pipeline_from_dict

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ResultLoadError(
            f"{os.fspath(path)!r} is not valid YAML ({err}); the file is damaged. Run the search again."
        ) from None
    try:
        return pipeline_from_dict(data, where=os.fspath(path))
    except InvalidInputError as err:
        raise ResultLoadError(f"cannot read the pipeline: {err}") from None


def _apply_model_stages(model: fx.GraphModule, dummy_input: Any, pipeline: Any) -> fx.GraphModule:
    """Re-run the stages registered with ``reapply_on_load`` (they change the graph); values come from the state dict."""
    from ..techniques._registry import registered_techniques

    techniques = registered_techniques()
    for stage in pipeline.stages:
        spec = techniques[stage.key]
        if spec.reapply_on_load and spec.acts_on == "model" and spec.apply is not None:
            model = spec.apply(model, dummy_input, stage.config)
    return model


def _estimator(entry: Any, default: str) -> Any:
    if isinstance(entry, Mapping) and isinstance(entry.get("scheme"), str):
        percentile = entry.get("percentile")
        try:
            return make_range_estimator(entry["scheme"], percentile if isinstance(percentile, (int, float)) else None)
        except InvalidInputError:
            logger.warning(
                "unknown quant scheme %r in the encodings; using %r (encodings are loaded as they are)", entry, default
            )
    return default


def _bw(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _default_dummy(summary: Mapping[str, Any]) -> Any:
    shapes = summary.get("dummy_input_shapes")

    def build(s: Any) -> Any:
        if isinstance(s, list) and all(isinstance(d, int) for d in s):
            return torch.zeros(s)
        if isinstance(s, list):
            return tuple(build(v) for v in s)
        if isinstance(s, Mapping):
            return {k: build(v) for k, v in s.items()}
        raise ResultLoadError(
            f"summary.json records the dummy input as {s!r}, which cannot be rebuilt; pass dummy_input= to load_result."
        )

    if shapes is None:
        raise ResultLoadError("summary.json does not record the dummy input's shapes; pass dummy_input= to load_result.")
    return build(shapes)


def load_result(
    results_dir: str | os.PathLike[str],
    model: nn.Module,
    dummy_input: Any = None,
    *,
    leaf_modules: Sequence[type[nn.Module] | str] = (),
    map_location: str | torch.device | None = None,
) -> LoadedResult:
    """Rebuild the best quantized model of a search from its results folder, without searching again.

    The FP32 ``model`` is prepared and the pipeline's graph stages (BatchNorm folding, CLE) are
    re-applied to recover the quantized model's structure; the weights, biases and AdaRound roundings
    then come from ``model_state.pt`` and every encoding and bit-width from ``encodings.json``. The
    rebuilt model's outputs equal those of the search's model bit for bit. Only safe loaders are
    used: ``json``, ``yaml.safe_load`` and ``torch.load(weights_only=True)``.

    Args:
        results_dir: the ``results_dir`` given to :class:`~aq_search.AutoQuant` (or its ``best`` subfolder).
        model: the same FP32 model the search was run on (its architecture; its weights are replaced).
        dummy_input: one batch as the model takes it; ``None`` builds float zeros of the shapes
            recorded in ``summary.json``.
        leaf_modules: the ``leaf_modules`` the search was run with, if any.
        map_location: the device to rebuild on (``"cuda"``, ``"cpu"`` ...); default: the model's device.
            Weights, roundings and the dummy input go there; the given model is not moved (a copy is).

    Returns:
        A :class:`LoadedResult` (``sim``, ``model``, ``pipeline``, ``summary``).

    Raises:
        ResultLoadError: files are missing (named), the folder's ``results_version`` is not one this
            aq-search reads (both versions named), or the folder belongs to another model.

    Example:
        >>> loaded = aq_search.load_result("aq_results", model, dummy_input)   # doctest: +SKIP
        >>> loaded.model(x)                                                      # doctest: +SKIP
        >>> loaded.export_onnx("deploy/model.onnx")                              # doctest: +SKIP
    """
    folder = _folder(results_dir)
    _check_files(folder)
    summary = _read_json(folder / "summary.json")
    _check_version(summary, folder / "summary.json")
    if not isinstance(model, nn.Module):
        raise parameter_error("model", "load_result", "the FP32 torch.nn.Module the search ran on", model)
    device = torch.device(map_location) if map_location is not None else (model_device(model) or torch.device("cpu"))
    if model_device(model) not in (None, device):
        model = copy.deepcopy(model).to(device)
    pipeline = _read_pipeline(folder / "pipeline.yaml")
    encodings = _read_json(folder / "encodings.json")
    if not isinstance(encodings, Mapping) or not isinstance(encodings.get("quantizer_args", {}), Mapping):
        raise ResultLoadError(f"{os.fspath(folder / 'encodings.json')!r} is not an encodings file.")
    try:
        state = torch.load(folder / "model_state.pt", map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for damaged or unsafe files
        raise ResultLoadError(
            f"cannot read {os.fspath(folder / 'model_state.pt')!r} as a plain state dict ({type(err).__name__}: {err}). "
            "load_result only loads tensors (weights_only=True); run the search again to rewrite the file."
        ) from None
    if not isinstance(state, Mapping):
        raise ResultLoadError(f"{os.fspath(folder / 'model_state.pt')!r} does not hold a state dict.")
    recorded = summary.get("leaf_modules")
    given = sorted(m if isinstance(m, str) else getattr(m, "__qualname__", str(m)) for m in leaf_modules)
    if isinstance(recorded, list) and sorted(str(r).rpartition(".")[2] for r in recorded) != sorted(
        g.rpartition(".")[2] for g in given
    ):
        raise ResultLoadError(
            f"the search ran with leaf_modules={recorded}, load_result got {given or '()'}; pass the same leaf_modules= "
            "so the model is traced the same way."
        )
    dummy = move_to(_default_dummy(summary) if dummy_input is None else dummy_input, device)

    prepared = prepare_model(model, dummy, leaf_modules=leaf_modules)
    structured = _apply_model_stages(prepared, dummy, pipeline)
    args = encodings.get("quantizer_args", {})
    per_channel = args.get("per_channel", True)
    sim = QuantSim(
        structured,
        dummy,
        param_quant_scheme=_estimator(args.get("param_quant_scheme"), "tf_enhanced"),
        activation_quant_scheme=_estimator(args.get("activation_quant_scheme"), "tf_enhanced"),
        default_param_bw=_bw(args.get("default_param_bw", 8)),
        default_output_bw=_bw(args.get("default_output_bw", 8)),
        per_channel=per_channel if isinstance(per_channel, bool) else True,
        activation_symmetric=args.get("activation_symmetric", False) is True,
        leaf_modules=leaf_modules,
    )
    _load_state(sim, state, folder)
    try:
        sim.load_encodings(encodings, strict=True)
    except InvalidInputError as err:
        raise ResultLoadError(
            f"encodings.json does not fit the rebuilt model: {err}. "
            "Fix: pass the same FP32 model (and leaf_modules) the search ran on."
        ) from None
    logger.info("loaded %s: %s", os.fspath(folder), pipeline)
    return LoadedResult(sim=sim, model=sim.model, pipeline=pipeline, summary=dict(summary), results_dir=os.fspath(folder))


def _load_state(sim: QuantSim, state: Mapping[str, Any], folder: Path) -> None:
    """Load the state dict; AdaRound's ``rounding`` buffers are created first (they start as None)."""
    params = sim.param_quantizers
    for key, value in state.items():
        if key.endswith(_ROUNDING_SUFFIX) and isinstance(value, torch.Tensor):
            name = key[: -len(_ROUNDING_SUFFIX)] + ".weight"
            if name in params:
                params[name].rounding = torch.zeros_like(value)
    try:
        missing, unexpected = sim.model.load_state_dict(dict(state), strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ResultLoadError(
            f"{os.fspath(folder / 'model_state.pt')!r} does not match the model rebuilt from pipeline.yaml: "
            f"{str(err).strip().splitlines()[-1].strip()}. "
            "Fix: pass the same FP32 model class (and leaf_modules) the search ran on."
        ) from None
    if missing or unexpected:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (" ..." if len(keys) > 6 else "")

        raise ResultLoadError(
            f"{os.fspath(folder / 'model_state.pt')!r} does not match the model rebuilt from pipeline.yaml"
            + (f"; missing: {show(missing)}" if missing else "")
            + (f"; unexpected: {show(unexpected)}" if unexpected else "")
            + ". Fix: pass the same FP32 model class (and leaf_modules) the search ran on."
        )
