"""The dynamo-based ONNX exporter (``torch.onnx.export(..., dynamo=True)``) for the marked export graph.

Each quantizer is replaced by a marker (see ``_onnx.py``). For this exporter the marker is a
``torch.library`` custom op, ``aq_export::marker(x, name)``, translated by an onnxscript function into an
``aq_export.Marker`` node with a ``name`` attribute; the node's ONNX schema is registered once so that
onnxscript knows its single output. The rest of the pipeline (marker -> Q/DQ) is the same for both
exporters. Needs ``onnxscript`` (the ``onnx`` extra); without it, or when the dynamo exporter fails,
:func:`~aq_search.export_onnx` falls back to the TorchScript exporter (``exporter="auto"``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, cast

import torch
from torch import Tensor

__all__ = ["DYNAMO_MIN_OPSET", "dynamo_available", "dynamo_export", "marker", "use_dynamo_markers"]

logger = logging.getLogger(__name__)

#: The lowest opset the dynamo exporter writes.
DYNAMO_MIN_OPSET = 18
_DOMAIN = "aq_export"
_state = {"dynamo": False, "registered": False}


@torch.library.custom_op("aq_export::marker", mutates_args=())
def _marker_op(x: Tensor, name: str) -> Tensor:
    return x.clone()


@_marker_op.register_fake
def _marker_fake(x: Tensor, name: str) -> Tensor:
    return torch.empty_like(x)


def marker(x: Tensor, name: str) -> Tensor | None:
    """The custom-op marker when a dynamo export is running, else ``None`` (the caller uses its own)."""
    if not _state["dynamo"]:
        return None
    out: Tensor = torch.ops.aq_export.marker(x, name)
    return out


@contextlib.contextmanager
def use_dynamo_markers() -> Iterator[None]:
    previous = _state["dynamo"]
    _state["dynamo"] = True
    try:
        yield
    finally:
        _state["dynamo"] = previous


def dynamo_available() -> str | None:
    """``None`` when the dynamo exporter can run here, else why not."""
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        return "onnxscript is not installed (pip install 'aq-search[onnx]')"
    return None


def _register_schema() -> Any:
    from onnx import defs
    from onnxscript import values

    if not _state["registered"]:
        try:
            defs.get_schema("Marker", 1, _DOMAIN)
        except Exception:  # noqa: BLE001 - not registered yet
            schema = defs.OpSchema(
                "Marker",
                _DOMAIN,
                1,
                inputs=[defs.OpSchema.FormalParameter("x", "T")],
                outputs=[defs.OpSchema.FormalParameter("y", "T")],
                type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(double)", "tensor(bfloat16)"], "")],
                attributes=[defs.OpSchema.Attribute("name", defs.OpSchema.AttrType.STRING, "quantizer name")],
            )
            defs.register_schema(schema)
        _state["registered"] = True
    return values.Opset(_DOMAIN, 1)


def dynamo_export(
    gm: torch.nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    opset: int,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]] | None,
) -> Any:
    """Export the marked graph with the dynamo exporter; returns the ONNX ModelProto."""
    import onnx

    domain = _register_schema()

    def translate(x: Any, name: str) -> Any:
        return domain.Marker(x, name=name)

    with use_dynamo_markers(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            gm,
            args,
            kwargs=kwargs or None,
            dynamo=True,
            opset_version=max(opset, DYNAMO_MIN_OPSET),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            custom_translation_table=cast(Any, {torch.ops.aq_export.marker.default: translate}),
            optimize=True,
            verbose=False,
        )
    assert program is not None
    model = program.model_proto
    return onnx.load_from_string(model.SerializeToString())
