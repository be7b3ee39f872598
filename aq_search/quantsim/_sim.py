"""QuantSim: a fake-quantized copy of a model, with named quantizers."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .._compat import UNSET, renamed_parameter
from .._errors import AQSearchError, CalibrationError, InvalidInputError
from ._calibrate import calibration_runner
from ._functional import is_data_movement
from ._layers import PASSTHROUGH_LAYERS
from ._placement import apply_static_placement, watch_masks
from ._prepare import prepare_model
from ._quantizer import FakeQuantizer, check_bitwidth
from ._range import RangeEstimator, make_range_estimator
from ._report import PreparationReport
from ._sim_build import float_weight, insert_quantizers, unfuse_activations
from ._sim_io import ENCODINGS_VERSION, encodings_dict, export_encodings, load_encodings

__all__ = ["ENCODINGS_VERSION", "QuantSim", "QuantizerOverride"]

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class QuantizerOverride:
    """Per-module settings that differ from the sim's defaults.

    ``param_bw`` / ``output_bw``: an int bit-width (2..16); ``None`` keeps the default.
    ``param_enabled`` / ``output_enabled``: False leaves that tensor in float.
    """

    param_bw: int | None = None
    output_bw: int | None = None
    param_enabled: bool | None = None
    output_enabled: bool | None = None

    def __post_init__(self) -> None:
        for what in ("param_bw", "output_bw"):
            value = getattr(self, what)
            if value is not None:
                check_bitwidth(value, what)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "override") -> QuantizerOverride:
        unknown = set(data) - {"param_bw", "output_bw", "param_enabled", "output_enabled"}
        if unknown:
            raise InvalidInputError(
                f"{where}: unknown key(s) {sorted(unknown)}; valid keys are param_bw, output_bw, param_enabled, output_enabled."
            )
        return cls(**dict(data))


class QuantSim:
    """A fake-quantized copy of ``model``.

    The model is prepared (traced, functional ops turned into modules; see
    :func:`~aq_search.prepare_model`), then gets quantizers:

    * a weight quantizer on every Conv1d/2d/3d, ConvTranspose and Linear layer (symmetric,
      per-channel by default) and on Embedding tables (per tensor), named ``"<module>.weight"``;
    * an activation quantizer (per tensor; asymmetric, or symmetric with ``activation_symmetric=True``)
      on every model input (named after the input)
      and on the output of every value-changing module (named after the module): layers,
      activations, add/mul/concat/matmul/softmax/LayerNorm ... Outputs that feed only a ReLU/ReLU6 or
      a BatchNorm are fused with it (their quantizer exists but is disabled). Data movement
      (reshape, max-pool, padding, dropout ...) gets none: it does not create new values.

    Args:
        model: the FP32 model (not modified; the sim works on a copy).
        dummy_input: one batch: a tensor, a tuple of inputs, or a dict of keyword inputs.
        quant_scheme: range setting for params and activations: ``"tf"``, ``"tf_enhanced"``,
            ``"percentile"`` or ``"mse"``.
        param_quant_scheme / activation_quant_scheme: override ``quant_scheme`` for one side.
        percentile: the percentile for the ``"percentile"`` scheme (e.g. 99.9, 99.99).
        default_param_bw / default_output_bw: bit-widths 2..16, or ``None`` for float.
        per_channel: per-output-channel weight encodings (True) or one per tensor.
        activation_symmetric: activation encodings on the signed grid ``[-2**(b-1), 2**(b-1) - 1]`` with
            zero point 0 (``int8`` -128..127 at 8 bits; what TensorRT and QNN's symmetric mode run), instead of
            the default unsigned asymmetric grid ``[0, 2**b - 1]`` (``uint8``).
        module_overrides: ``{module name or "re:<regex>": QuantizerOverride or dict}``.
        leaf_modules: module classes or names to keep whole when tracing.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten())
        >>> x = torch.randn(4, 3, 8, 8)
        >>> sim = QuantSim(net, x, default_param_bw=8, default_output_bw=8)
        >>> sim.compute_encodings(lambda m: m(x))
        >>> sim.model(x).shape
        torch.Size([4, 288])
    """

    def __init__(
        self,
        model: nn.Module,
        dummy_input: Any,
        *,
        quant_scheme: str | RangeEstimator = "tf_enhanced",
        param_quant_scheme: str | RangeEstimator | None = None,
        activation_quant_scheme: str | RangeEstimator | None = None,
        percentile: float = 99.99,
        default_param_bw: int | None = 8,
        default_output_bw: int | None = 8,
        per_channel: bool = True,
        activation_symmetric: bool = False,
        module_overrides: Mapping[str, QuantizerOverride | Mapping[str, Any]] | None = None,
        leaf_modules: Sequence[type[nn.Module] | str] = (),
    ) -> None:
        if default_param_bw is not None:
            check_bitwidth(default_param_bw, "default_param_bw")
        if default_output_bw is not None:
            check_bitwidth(default_output_bw, "default_output_bw")
        if not isinstance(per_channel, bool):
            raise InvalidInputError(f"The 'per_channel' parameter must be a bool. Got {per_channel!r} instead.")
        if not isinstance(activation_symmetric, bool):
            raise InvalidInputError(
                f"The 'activation_symmetric' parameter must be a bool. Got {activation_symmetric!r} instead."
            )
        self.activation_symmetric = activation_symmetric
        self._param_estimator = make_range_estimator(param_quant_scheme or quant_scheme, percentile)
        self._act_estimator = make_range_estimator(activation_quant_scheme or quant_scheme, percentile)
        self.default_param_bw = default_param_bw
        self.default_output_bw = default_output_bw
        self.per_channel = per_channel
        self.dummy_input = dummy_input
        self.model: fx.GraphModule = prepare_model(model, dummy_input, leaf_modules=leaf_modules)
        report = self.preparation_report
        if report.changes:
            logger.info("QuantSim prepared the model: %d change(s): %s", len(report.changes), "; ".join(report.changes[:10]))
        for problem in report.warnings:
            logger.warning("QuantSim: %s", problem)
        self._activation: dict[str, FakeQuantizer] = {}
        self._param: dict[str, FakeQuantizer] = {}
        self._output_of: dict[str, list[str]] = {}
        self._input_names: list[str] = []
        #: Activation quantizers the transformer-aware placement left in float, with the reason.
        self.unquantized: dict[str, str] = {}
        insert_quantizers(self)
        apply_static_placement(self)
        if module_overrides:
            self.apply_overrides(module_overrides)
        self.model.eval()

    # -- construction ----------------------------------------------------------------------------
    @property
    def preparation_report(self) -> PreparationReport:
        report: PreparationReport = self.model.meta["aq_search"]["report"]
        return report

    def unfuse_activations(self) -> None:
        """Put the activation ops folded into quantizers back into the graph (same outputs, slower)."""
        unfuse_activations(self)

    # -- lookup ----------------------------------------------------------------------------------
    @property
    def activation_quantizers(self) -> dict[str, FakeQuantizer]:
        """Activation quantizers by tensor name (model input name or producing module name)."""
        return dict(self._activation)

    @property
    def param_quantizers(self) -> dict[str, FakeQuantizer]:
        """Weight quantizers by parameter name (``"<module>.weight"``)."""
        return dict(self._param)

    @property
    def input_names(self) -> list[str]:
        return list(self._input_names)

    @property
    def quantized_layers(self) -> list[str]:
        """Names of the modules with a weight quantizer, in execution order."""
        return [name.rpartition(".")[0] for name in self._param]

    def layer(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def float_weight(self, name: str) -> torch.Tensor:
        """The float weight of a quantized layer."""
        return float_weight(self.layer(name))

    def param_quantizer(self, module_name: str) -> FakeQuantizer:
        try:
            return self._param[f"{module_name}.weight"]
        except KeyError:
            raise InvalidInputError(
                self._unknown(module_name, [n.rpartition(".")[0] for n in self._param], "weight quantizer")
            ) from None

    def output_quantizers(self, module_name: str) -> list[FakeQuantizer]:
        """The quantizer(s) of a module's output (several when a shared module is called more than once)."""
        if module_name in self._input_names:
            return [self._activation[module_name]]
        names = self._output_of.get(module_name)
        if not names:
            raise InvalidInputError(self._unknown(module_name, list(self._output_of) + self._input_names, "output quantizer"))
        return [self._activation[n] for n in names]

    def output_quantizer(self, module_name: str) -> FakeQuantizer:
        return self.output_quantizers(module_name)[0]

    @staticmethod
    def _unknown(name: str, known: Iterable[str], what: str) -> str:
        import difflib

        known = list(known)
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return (
            f"No {what} for module {name!r}.{hint} "
            "Names are module names of the prepared model (sim.quantized_layers lists the layers)."
        )

    def module_names(self) -> list[str]:
        """Every module name with a quantizer (weights or output), plus the model inputs."""
        names = list(self._input_names)
        for n in self._output_of:
            names.append(n)
        for n in self.quantized_layers:
            if n not in self._output_of:
                names.append(n)
        return names

    def input_quantizers_of(self, module_name: str) -> list[str]:
        """Names of the activation quantizers that feed a module (through data movement)."""
        found: list[str] = []
        for node in self.model.graph.nodes:
            if node.op == "call_module" and str(node.target) == module_name:
                for arg in node.all_input_nodes:
                    self._walk_to_quantizer(arg, found, set())
        return found

    def _walk_to_quantizer(self, node: fx.Node, found: list[str], seen: set[fx.Node]) -> None:
        if node in seen:
            return
        seen.add(node)
        name = node.meta.get("aq_quantizer")
        if name is not None:
            if name not in found:
                found.append(name)
            return
        passthrough = is_data_movement(node) or (
            node.op == "call_module" and isinstance(self.model.get_submodule(str(node.target)), PASSTHROUGH_LAYERS)
        )
        if passthrough:
            for arg in node.all_input_nodes:
                if "tensor_meta" in arg.meta or "type" not in arg.meta:  # skip shape queries: x.view(x.size(0), -1)
                    self._walk_to_quantizer(arg, found, seen)

    # -- configuration ---------------------------------------------------------------------------
    def _match(self, pattern: str) -> list[str]:
        names = self.module_names()
        if pattern.startswith("re:"):
            regex = re.compile(pattern[3:])
            matched = [n for n in names if regex.fullmatch(n)]
            if not matched:
                raise InvalidInputError(f"module override {pattern!r} matches no module of the prepared model.")
            return matched
        if pattern not in names:
            raise InvalidInputError(self._unknown(pattern, names, "quantizer"))
        return [pattern]

    def apply_overrides(self, overrides: Mapping[str, QuantizerOverride | Mapping[str, Any]]) -> None:
        """Apply ``{module name or "re:<regex>": QuantizerOverride}``."""
        for pattern, raw in overrides.items():
            override = raw if isinstance(raw, QuantizerOverride) else QuantizerOverride.from_dict(raw, f"override {pattern!r}")
            for name in self._match(pattern):
                if override.param_bw is not None or override.output_bw is not None:
                    self.set_bitwidth(
                        name,
                        param_bw=override.param_bw if name in self.quantized_layers else None,
                        output_bw=override.output_bw,
                    )
                if override.param_enabled is not None or override.output_enabled is not None:
                    self.set_enabled(
                        name,
                        param=override.param_enabled if name in self.quantized_layers else None,
                        output=override.output_enabled,
                    )

    def set_bitwidth(
        self,
        module_name: str,
        *,
        param_bw: int | None = None,
        output_bw: int | None = None,
        param_dtype: str = "int",
        output_dtype: str = "int",
    ) -> None:
        """Change a module's weight and/or output bit-width (``dtype="float"`` with 16 or 32 for float).

        Activation encodings are recomputed from the calibration statistics when there are some,
        weight encodings from the weight, so no new calibration pass is needed.
        """
        if param_bw is not None:
            q = self.param_quantizer(module_name)
            q.set_format(param_bw, param_dtype)
            if q.dtype == "int" and self._encoded:
                q.compute_encoding(float_weight(self.layer(module_name)))
        if output_bw is not None:
            for q in self.output_quantizers(module_name):
                dropped = q.set_format(output_bw, output_dtype)
                if dropped:
                    logger.warning("output encoding of %r dropped: no calibration statistics to recompute it", module_name)

    def set_enabled(self, module_name: str, *, param: bool | None = None, output: bool | None = None) -> None:
        """Enable or disable (leave in float) a module's weight and/or output quantization."""
        if param is not None:
            self.param_quantizer(module_name).enabled = param
        if output is not None:
            for q in self.output_quantizers(module_name):
                q.enabled = output

    def set_quant_scheme(
        self,
        *,
        param_scheme: str | RangeEstimator | None = None,
        activation_scheme: str | RangeEstimator | None = None,
        percentile: float | None = None,
    ) -> None:
        """Switch range setting; encodings are recomputed from the stored statistics (no new calibration).

        Only the side whose scheme changes is recomputed: asking for the scheme a side already has keeps its
        encodings (weight ranges by ``tf_enhanced`` search every channel, which is slow on large models).
        """
        params_changed = acts_changed = False
        if param_scheme is not None:
            estimator = make_range_estimator(param_scheme, percentile)
            params_changed = any(q.estimator != estimator for q in self._param.values())
            self._param_estimator = estimator
            for q in self._param.values():
                q.set_estimator(self._param_estimator)
        if activation_scheme is not None:
            estimator = make_range_estimator(activation_scheme, percentile)
            acts_changed = any(q.estimator != estimator for q in self._activation.values())
            self._act_estimator = estimator
            for q in self._activation.values():
                q.set_estimator(self._act_estimator)
        if self._encoded:
            if acts_changed:
                self._compute_activation_encodings()
            if params_changed:
                self.compute_param_encodings()

    @property
    def param_quant_scheme(self) -> RangeEstimator:
        return self._param_estimator

    @property
    def activation_quant_scheme(self) -> RangeEstimator:
        return self._act_estimator

    # -- calibration -----------------------------------------------------------------------------
    @property
    def _encoded(self) -> bool:
        return any(q.scale is not None for q in self._activation.values()) or any(
            q.scale is not None for q in self._param.values()
        )

    @contextmanager
    def _calibrating(self) -> Iterator[None]:
        active = [q for q in list(self._activation.values()) + list(self._param.values()) if q.enabled]
        training = self.model.training
        self.model.eval()
        for q in active:
            if q.kind == "activation" and q.dtype == "int":
                q.start_observing(reset=True)
            else:
                q.observing = True
        try:
            yield
        finally:
            for q in active:
                q.stop_observing()
            self.model.train(training)

    def compute_encodings(
        self,
        forward_pass_callback: Callable[..., Any] | Iterable[Any] | None = None,
        forward_pass_callback_args: Any = None,
        *,
        forward_fn: Any = UNSET,
        forward_fn_args: Any = UNSET,
    ) -> None:
        """Calibrate: run ``forward_pass_callback(model)`` and compute every encoding from what was seen.

        Args:
            forward_pass_callback: a callable that runs calibration batches through the model it is
                given (``forward_pass_callback(model)``, or ``forward_pass_callback(model,
                forward_pass_callback_args)`` as in AIMET). The user owns the loop. A re-iterable of
                batches (a DataLoader, a list) is accepted too: each batch is fed as ``model(x)`` /
                ``model(*x)`` / ``model(**x)``.
            forward_pass_callback_args: passed as the second argument when given.
            forward_fn / forward_fn_args: deprecated names of the two above (``forward_fn`` means
                ``forward_fn(model, batch)`` everywhere else); they warn and will be removed.

        Activations are observed in float (quantization off); weights are encoded from the weights.

        Raises:
            CalibrationError: ``forward_pass_callback`` raised, or no calibration data reached the model.
        """
        who = "QuantSim.compute_encodings"
        callback = renamed_parameter(who, "forward_fn", "forward_pass_callback", forward_fn, forward_pass_callback)
        callback_args = renamed_parameter(
            who, "forward_fn_args", "forward_pass_callback_args", forward_fn_args, forward_pass_callback_args
        )
        run = calibration_runner(callback, callback_args)
        with self._calibrating(), torch.no_grad(), watch_masks(self):
            try:
                run(self.model)
            except AQSearchError:
                raise  # already says what is wrong and how to fix it
            except Exception as err:
                raise CalibrationError(
                    f"The calibration callback (forward_pass_callback) raised {type(err).__name__}: {err}"
                ) from err
        self._compute_activation_encodings(after_calibration=True)
        self.compute_param_encodings()

    def _compute_activation_encodings(self, after_calibration: bool = False) -> None:
        observed = [q for q in self._activation.values() if q.enabled and q.dtype == "int"]
        unseen = [name for name, q in self._activation.items() if q in observed and (q.stats is None or q.stats.empty)]
        if observed and len(unseen) == len(observed) and after_calibration:
            raise CalibrationError(
                "Calibration saw no data: forward_pass_callback(model) did not run any batch through the model it was given. "
                "It must call the model passed to it, e.g. `lambda model: [model(x) for x in calibration_batches]`, "
                "and the calibration data must not be empty."
            )
        for name, q in self._activation.items():
            if q not in observed:
                continue
            if name in unseen:
                if after_calibration:
                    logger.warning("activation quantizer %r saw no calibration data (its op never ran); it is disabled", name)
                    q.enabled = False
                continue
            q.compute_encoding()

    def compute_param_encodings(self) -> None:
        """(Re)compute weight encodings from the current float weights (frozen ones are kept)."""
        for name, q in self._param.items():
            if q.enabled and q.dtype == "int" and not q.frozen:
                q.compute_encoding(float_weight(self.layer(name.rpartition(".")[0])))

    # -- encodings I/O -------------------------------------------------------------------------
    # -- encodings I/O -------------------------------------------------------------------------
    def encodings(self) -> dict[str, Any]:
        """All encodings as a JSON-able dict (the content of :meth:`export_encodings`)."""
        return encodings_dict(self)

    def export_encodings(self, path: str | os.PathLike[str]) -> None:
        """Write the encodings JSON (AIMET-style ``activation_encodings`` / ``param_encodings``)."""
        export_encodings(self, path)

    def load_encodings(self, path: str | os.PathLike[str] | Mapping[str, Any], *, strict: bool = True) -> None:
        """Load encodings written by :meth:`export_encodings`; the sim then reproduces the exported outputs.

        AIMET's ``1.0.0`` list layout is read too (see :func:`aq_search.export.to_aimet_v1`).

        Quantizers absent from the file are disabled (the file says they were float); with
        ``strict=True`` names the sim does not know are an error.
        """
        load_encodings(self, path, strict=strict)

    # -- misc ------------------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def summary(self) -> str:
        """A table of quantizers: name, format, scheme, enabled."""
        lines = ["kind   name                                              format  enabled  encoding"]
        for kind, items in (("param", self._param), ("act", self._activation)):
            for name, q in items.items():
                fmt = f"{q.dtype}{q.bitwidth}"
                lines.append(f"{kind:6} {name:50} {fmt:7} {q.enabled!s:8} {'yes' if q.has_encoding else 'no'}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"QuantSim(layers={len(self._param)}, activation_quantizers={len(self._activation)}, "
            f"param_bw={self.default_param_bw}, output_bw={self.default_output_bw}, per_channel={self.per_channel}, "
            f"activation_symmetric={self.activation_symmetric}, "
            f"param_scheme={self._param_estimator.name}, activation_scheme={self._act_estimator.name})"
        )
