"""The reference side of ``benchmarks/compare_quantsim.py``: AIMET 2.30's QuantizationSimModel per scheme.

Runs INSIDE the AIMET venv; does not import aq_search. Usage::

    OMP_NUM_THREADS=1 /work/venv-aimet/bin/python benchmarks/_aimet_quantsim.py job.json

The job (written by compare_quantsim.py) names the case (``FILE.py:build`` + ``case_kwargs``), the
thread count, the schemes and the modes (``w8a8``: weights and activations quantized; ``w8``: weights
only, every input/output quantizer removed; ``a8``: activations only, every param quantizer
removed). The model is prepared with AIMET's model preparer and BatchNorm-folded with AIMET's
``fold_all_batch_norms``; weights per channel (``default_config_per_channel.json``), as AutoQuant
does it.

Writes ``output`` (JSON: accuracy, output SQNR on the calibration images, seconds per scheme/mode)
and ``tensors`` (a ``torch.save`` of each layer's quantize-dequantized weight and per-channel
encoding min/max for every scheme, from the weights-only sims), so the caller compares the two
tools' weight encodings layer by layer.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _aimet_reference import load_case


def _sqnr_db(ref: Any, out: Any) -> float:
    noise = float((out - ref).double().pow(2).sum())
    signal = float(ref.double().pow(2).sum())
    return math.inf if noise == 0 else 10.0 * math.log10(signal / noise)


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
    from aimet_torch.batch_norm_fold import fold_all_batch_norms
    from aimet_torch.common.defs import QuantScheme
    from aimet_torch.model_preparer import prepare_model
    from aimet_torch.quantsim import QuantizationSimModel

    config = os.path.join(os.path.dirname(qcfg.__file__), "default_config_per_channel.json")
    model, dummy, calib, eval_fn, _ = load_case(job["case"], job.get("case_kwargs", {}), [os.getcwd()])
    model.eval()
    prepared = prepare_model(copy.deepcopy(model))
    folded = copy.deepcopy(prepared)
    fold_all_batch_norms(folded, None, dummy)
    folded.eval()
    with torch.no_grad():
        ref_out = torch.cat([folded(b) for b in calib])
    out: dict[str, Any] = {
        "versions": {"aimet_torch": aimet_torch.__version__, "torch": torch.__version__, "threads": torch.get_num_threads()},
        "fp32": {"accuracy": float(eval_fn(folded, None))},
        "runs": {},
    }

    def feed(m: torch.nn.Module, _: Any = None) -> None:
        with torch.no_grad():
            for b in calib:
                m(b)

    schemes = {
        "tf": (QuantScheme.post_training_tf, None),
        "tf_enhanced": (QuantScheme.post_training_tf_enhanced, None),
        "percentile": (QuantScheme.post_training_percentile, float(job.get("percentile", 99.99))),
    }
    weighted = {n for n, m in folded.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    tensors: dict[str, dict[str, dict[str, Any]]] = {}
    for name in job["schemes"]:
        if name not in schemes:
            continue
        scheme, pct = schemes[name]
        for mode in job["modes"]:
            start = time.perf_counter()
            sim = QuantizationSimModel(
                copy.deepcopy(folded),
                dummy,
                quant_scheme=scheme,
                default_param_bw=int(job["param_bw"]),
                default_output_bw=int(job["output_bw"]),
                config_file=config,
            )
            if pct is not None:
                sim.set_percentile_value(pct)
            for m in sim.model.modules():
                if not hasattr(m, "param_quantizers") or not hasattr(m, "output_quantizers"):
                    continue
                if mode == "a":  # activations only: weights stay float
                    for p in list(m.param_quantizers.keys()):
                        m.param_quantizers[p] = None
                if mode == "w":  # weights only: inputs and outputs stay float
                    for i in range(len(m.input_quantizers)):
                        m.input_quantizers[i] = None
                    for i in range(len(m.output_quantizers)):
                        m.output_quantizers[i] = None
            sim.compute_encodings(feed, None)
            calibrate_s = time.perf_counter() - start
            sim.model.eval()
            with torch.no_grad():
                sim_out = torch.cat([sim.model(b) for b in calib])
            acc = float(eval_fn(sim.model, None))
            out["runs"][f"{name}/{mode}"] = {
                "accuracy": acc,
                "calib_sqnr_db": _sqnr_db(ref_out, sim_out),
                "calibrate_s": calibrate_s,
            }
            print(f"AIMET_QUANTSIM {name}/{mode}: acc {acc:.4f}", flush=True)
            if mode == "w":
                per_layer: dict[str, dict[str, Any]] = {}
                for lname in weighted:
                    qm = sim.model.get_submodule(lname)
                    pq = getattr(qm, "param_quantizers", None)
                    q = pq["weight"] if pq is not None and "weight" in pq else None
                    if q is None:
                        continue
                    with torch.no_grad():
                        per_layer[lname] = {
                            "w_qdq": q(qm.weight).as_subclass(torch.Tensor).detach().clone(),
                            "min": q.get_min().detach().reshape(-1).clone(),
                            "max": q.get_max().detach().reshape(-1).clone(),
                            "w_fp": folded.get_submodule(lname).weight.detach().clone(),
                        }
                tensors[name] = per_layer
            del sim
    torch.save(tensors, job["tensors"])
    with open(job["output"], "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
