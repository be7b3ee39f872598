#!/usr/bin/env bash
# Run the embedded default: create or reuse a virtual environment, install torch 2.13.0 (CPU wheel)
# pinned before the package, then `aq-search demo` (digits CNN, SQLite study in ./aq_results).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${AQ_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q torch==2.13.0
python -m pip install -q -e .
aq-search demo "$@"
