"""The reference side of ``benchmarks/micro_reference.py``: AIMET 2.30 QuantSim and AdaRound timings.

Runs INSIDE the AIMET venv (``benchmarks/aimet_env.sh``); does not import aq_search. Usage::

    OMP_NUM_THREADS=1 .venv-aimet/bin/python benchmarks/_aimet_micro.py job.json

The job (written by micro_reference.py) names the case (``FILE.py:build`` + ``case_kwargs``), the
thread count, the timing batch and repeats, the schemes to calibrate, and the AdaRound settings
(``bits``, ``num_iterations``, ``num_batches``, ``layers``). Writes ``output`` (JSON: timings) and
``tensors`` (a ``torch.save`` of the AdaRound layers' weights: FP32 folded, round-to-nearest and
AdaRound quantize-dequantized, so the caller scores both tools' roundings with one function).

The model is prepared with AIMET's model preparer and BatchNorm-folded with AIMET's
``fold_all_batch_norms`` (what AutoQuant does before its BN-fold stage); weights per channel
(``default_config_per_channel.json``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _aimet_reference import load_case


def _median_time(fn: Any, repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("job")
    args = ap.parse_args()
    with open(args.job) as f:
        job = json.load(f)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import torch

    torch.set_num_threads(int(job.get("num_threads", 1)))
    torch.manual_seed(0)
    import aimet_torch
    import aimet_torch.common.quantsim_config as qcfg
    from aimet_torch.adaround import Adaround, AdaroundParameters
    from aimet_torch.batch_norm_fold import fold_all_batch_norms
    from aimet_torch.common.defs import QuantScheme
    from aimet_torch.model_preparer import prepare_model
    from aimet_torch.quantsim import QuantizationSimModel

    config = os.path.join(os.path.dirname(qcfg.__file__), "default_config_per_channel.json")
    model, dummy, calib, _, _ = load_case(job["case"], job.get("case_kwargs", {}), [os.getcwd()])
    model.eval()
    x = torch.cat(calib)[: int(job["timing_batch"])]
    repeats = int(job.get("repeats", 5))
    out: dict[str, Any] = {
        "versions": {"aimet_torch": aimet_torch.__version__, "torch": torch.__version__, "threads": torch.get_num_threads()}
    }

    def feed(m: torch.nn.Module, _: Any = None) -> None:
        with torch.no_grad():
            for b in calib:
                m(b)

    # -- sim eval overhead (W8A8, tf_enhanced, per channel) on the prepared, BN-folded model -----------
    prepared = prepare_model(copy.deepcopy(model))
    folded = copy.deepcopy(prepared)
    fold_all_batch_norms(folded, None, dummy)
    folded.eval()
    sim = QuantizationSimModel(
        copy.deepcopy(folded),
        dummy,
        quant_scheme=QuantScheme.post_training_tf_enhanced,
        default_param_bw=8,
        default_output_bw=8,
        config_file=config,
    )
    sim.compute_encodings(feed, None)
    sim.model.eval()
    with torch.no_grad():
        fp32_a = _median_time(lambda: model(x), repeats)
        fp32_folded = _median_time(lambda: folded(x), repeats)
        sim_t = _median_time(lambda: sim.model(x), repeats)
        fp32_b = _median_time(lambda: model(x), repeats)
    out["eval"] = {"fp32_s": min(fp32_a, fp32_b), "fp32_folded_s": fp32_folded, "sim_w8a8_s": sim_t, "batch": len(x)}

    # -- calibration time per scheme (sim creation and compute_encodings timed separately) -----------
    schemes = {
        "tf": (QuantScheme.post_training_tf, None),
        "tf_enhanced": (QuantScheme.post_training_tf_enhanced, None),
        "percentile": (QuantScheme.post_training_percentile, 99.99),
    }
    out["calibration"] = {}
    for name in job.get("schemes", list(schemes)):
        if name not in schemes:
            out["calibration"][name] = None  # no such scheme in AIMET
            continue
        scheme, pct = schemes[name]
        start = time.perf_counter()
        s = QuantizationSimModel(
            copy.deepcopy(folded), dummy, quant_scheme=scheme, default_param_bw=8, default_output_bw=8, config_file=config
        )
        if pct is not None:
            s.set_percentile_value(pct)
        built = time.perf_counter() - start
        start = time.perf_counter()
        s.compute_encodings(feed, None)
        out["calibration"][name] = {"create_s": built, "compute_encodings_s": time.perf_counter() - start}
        del s

    # -- AdaRound on the chosen layers -----------------------------------------------------------------
    ada = job["adaround"]
    # AIMET's model preparer turns a conv called functionally inside a module (EfficientNet's
    # Conv2dStaticSamePadding) into a child ``<name>.module_conv2d_<i>``: map the job's names (the
    # original modules') to the prepared model's
    weighted = {n for n, m in folded.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}

    def aimet_name(n: str) -> str:
        if n in weighted:
            return n
        found = [w for w in weighted if w.startswith(n + ".") and w.count(".") == n.count(".") + 1]
        if len(found) != 1:
            raise KeyError(f"no single conv/linear for {n!r} in the prepared model: {found}")
        return found[0]

    to_aimet = {n: aimet_name(n) for n in ada["layers"]}
    from_aimet = {v: k for k, v in to_aimet.items()}
    layers = list(to_aimet.values())
    from aimet_torch._base.adaround import adaround_optimizer as opt_mod

    per_layer: dict[str, dict[str, float]] = {}
    ada_in = copy.deepcopy(folded)
    names = {m: n for n, m in ada_in.named_modules()}
    original_module, original_opt = opt_mod.AdaroundOptimizer.adaround_module, opt_mod.AdaroundOptimizer._optimize_rounding

    def timed_module(module: torch.nn.Module, *a: Any, **k: Any) -> Any:
        start = time.perf_counter()
        r = original_module(module, *a, **k)
        name = names.get(module, "?")
        per_layer.setdefault(from_aimet.get(name, name), {})["whole_s"] = time.perf_counter() - start
        return r

    def timed_opt(module: torch.nn.Module, *a: Any, **k: Any) -> Any:
        start = time.perf_counter()
        r = original_opt(module, *a, **k)
        name = names.get(module, "?")
        per_layer.setdefault(from_aimet.get(name, name), {})["optimize_s"] = time.perf_counter() - start
        return r

    opt_mod.AdaroundOptimizer.adaround_module = staticmethod(timed_module)
    opt_mod.AdaroundOptimizer._optimize_rounding = staticmethod(timed_opt)
    ignore = [m for n, m in ada_in.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and n not in layers]
    # RTN weights of the same grid: a param-only sim, tf (min-max) weights, per channel
    rtn_sim = QuantizationSimModel(
        copy.deepcopy(folded),
        dummy,
        quant_scheme=QuantScheme.post_training_tf,
        default_param_bw=int(ada["bits"]),
        default_output_bw=8,
        config_file=config,
    )
    rtn_sim.compute_encodings(feed, None)
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for name in layers:
        qm = rtn_sim.model.get_submodule(name)
        with torch.no_grad():
            tensors[name] = {
                "w_fp": folded.get_submodule(name).weight.detach().clone(),
                "w_rtn": qm.param_quantizers["weight"](qm.weight).as_subclass(torch.Tensor).detach().clone(),
            }
    loader: Any = torch.utils.data.DataLoader(torch.cat(calib), batch_size=len(calib[0]), shuffle=False)  # type: ignore[arg-type]
    params = AdaroundParameters(loader, int(ada["num_batches"]), default_num_iterations=int(ada["num_iterations"]))
    work = tempfile.mkdtemp(prefix="aimet_micro_")
    start = time.perf_counter()
    try:
        ada_model = Adaround.apply_adaround(
            ada_in,
            dummy,
            params,
            path=work,
            filename_prefix="ada",
            default_param_bw=int(ada["bits"]),
            ignore_quant_ops_list=ignore,
            default_quant_scheme=QuantScheme.post_training_tf,
            default_config_file=config,
        )
    finally:
        opt_mod.AdaroundOptimizer.adaround_module = original_module
        opt_mod.AdaroundOptimizer._optimize_rounding = original_opt
    total = time.perf_counter() - start
    # the returned model holds AdaRound's weights (soft-rounded values copied in); quantize them with the
    # frozen AdaRound encodings, as a QuantSim that loads the exported encodings does
    with open(os.path.join(work, "ada.encodings")) as fh:
        enc = json.load(fh)["param_encodings"]
    for name in layers:
        w = ada_model.get_submodule(name).weight.detach()
        e = enc[f"{name}.weight"]
        scale = torch.tensor([c["scale"] for c in e], dtype=w.dtype)
        offset = torch.tensor([c["offset"] for c in e], dtype=w.dtype)
        qmin, qmax = 0, 2 ** int(e[0]["bitwidth"]) - 1
        shape = [-1] + [1] * (w.dim() - 1)
        s, o = scale.reshape(shape), offset.reshape(shape)
        q = torch.clamp(torch.round(w / s) - o, qmin, qmax)
        tensors[name]["w_ada"] = ((q + o) * s).clone()
        tensors[name]["w_ada_soft"] = w.clone()
    out["adaround"] = {
        "total_s": total,
        "layers": per_layer,
        "iterations": int(ada["num_iterations"]),
        "num_batches": int(ada["num_batches"]),
        "samples_per_iteration": "32 images (BATCH_SIZE)",
    }
    torch.save({from_aimet[n]: t for n, t in tensors.items()}, job["tensors"])
    with open(job["output"], "w") as f:
        json.dump(out, f, indent=1)
    print("AIMET_MICRO " + json.dumps({k: out[k] for k in ("eval", "calibration")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
