#!/usr/bin/env bash
# Build (or reuse) a separate virtual environment with Qualcomm AIMET
# (aimet-torch 2.30.0) on a CPU-only torch, for benchmarks/_aimet_reference.py.
#
# Usage:  bash benchmarks/aimet_env.sh [VENV_DIR]
#         AIMET_VENV=/path/to/venv bash benchmarks/aimet_env.sh
#   VENV_DIR   default: ${AIMET_VENV:-<repo>/.venv-aimet}
#   AIMET_PYTHON   interpreter used to create the venv (default: python3, needs 3.10+)
#   AIMET_FORCE=1  reinstall packages even if the venv already looks complete
#
# Idempotent: an existing venv that already has the pinned versions is only
# re-checked (shim rewritten, smoke import run).  Fresh install: ~2 min, ~1.9 GiB.
#
# Why the shim: aimet-torch depends on torchvision, and PyPI's torchvision
# wheel is a CUDA build whose torchvision/_C.so cannot load beside the CPU-only
# torch 2.13.0 wheel; `import torchvision` then raises
#   RuntimeError: operator torchvision::nms does not exist
# (torchvision/_meta_registrations.py registers fake kernels for nms/qnms
# unconditionally).  We write a sitecustomize.py into the venv that declares
# those two op schemas right before torchvision is first imported.  AutoQuant
# never calls torchvision's compiled ops.
set -euo pipefail

TORCH_VERSION=2.13.0
TORCHVISION_VERSION=0.28.0   # the torchvision release built against torch 2.13.0
AIMET_VERSION=2.30.0

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
VENV="${1:-${AIMET_VENV:-$repo/.venv-aimet}}"
PY="${AIMET_PYTHON:-python3}"

t0=$(date +%s)
log() { printf '[aimet_env] %s\n' "$*" >&2; }

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating venv $VENV with $($PY --version 2>&1)"
  "$PY" -m venv "$VENV"
else
  log "reusing venv $VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check)

have_pinned() {
  "$VPY" - "$TORCH_VERSION" "$AIMET_VERSION" "$TORCHVISION_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version, PackageNotFoundError
want_torch, want_aimet, want_tv = sys.argv[1:4]
try:
    ok = (version("torch").split("+")[0] == want_torch
          and version("aimet-torch") == want_aimet
          and version("torchvision").split("+")[0] == want_tv)
except PackageNotFoundError:
    ok = False
sys.exit(0 if ok else 1)
EOF
}

if [[ "${AIMET_FORCE:-0}" != 1 ]] && have_pinned; then
  log "torch $TORCH_VERSION, torchvision $TORCHVISION_VERSION, aimet-torch $AIMET_VERSION already installed"
else
  # 1) torch first, so the resolver keeps the CPU build (on these machines pip's
  #    find-links serves torch-2.13.0+cpu from local disk; plain PyPI would give
  #    the CUDA build with ~3 GB of nvidia-* wheels).
  log "installing torch==$TORCH_VERSION"
  "${PIP[@]}" install -q "torch==$TORCH_VERSION"
  # 2) AIMET + the matching torchvision, torch pinned so nothing replaces it.
  log "installing aimet-torch==$AIMET_VERSION (+ torchvision==$TORCHVISION_VERSION)"
  "${PIP[@]}" install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" \
    "aimet-torch==$AIMET_VERSION"
fi

# Warn loudly if a CUDA torch or nvidia-* runtime wheels slipped in.
"$VPY" - <<'EOF' >&2
from importlib.metadata import distributions, version
tv = version("torch")
nv = sorted(d.metadata["Name"] for d in distributions() if d.metadata["Name"].lower().startswith("nvidia"))
if "+cpu" not in tv:
    print(f"[aimet_env] WARNING: torch {tv} is not a +cpu build")
if nv:
    print(f"[aimet_env] WARNING: CUDA runtime wheels installed: {', '.join(nv)}")
EOF

# 3) torchvision op-schema shim (always rewritten: cheap and keeps it current).
site="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cat > "$site/sitecustomize.py" <<'EOF'
# Written by aq-search benchmarks/aimet_env.sh -- rewritten on every run, do not edit.
#
# PyPI's torchvision wheel is a CUDA build whose compiled ops library
# (torchvision/_C.so) cannot load beside the CPU-only torch wheel used here, so
# `import torchvision` dies in _meta_registrations.py with
# "RuntimeError: operator torchvision::nms does not exist" (it registers fake
# kernels for nms/qnms unconditionally).  AIMET's AutoQuant needs none of
# torchvision's compiled ops, so we declare the two op schemas (no kernels)
# right before torchvision is first imported.  A meta-path hook does it lazily,
# so plain `python`/`pip` runs in this venv do not pay for importing torch.
import sys


class _TorchvisionOpsShim:
    _done = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision" or _TorchvisionOpsShim._done:
            return None
        _TorchvisionOpsShim._done = True
        try:
            import torch

            for schema in (
                "torchvision::nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                "torchvision::qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
            ):
                name, sig = schema.split("(", 1)
                try:
                    torch._C._dispatch_find_schema_or_throw(name, "")
                    continue  # already defined (real torchvision ops loaded)
                except RuntimeError:
                    pass
                torch.library.define(name, "(" + sig)
        except Exception as exc:  # never break interpreter start-up
            print(f"[aimet torchvision shim] failed: {exc!r}", file=sys.stderr)
        return None  # fall through to the normal finders


if not any(type(f).__name__ == "_TorchvisionOpsShim" for f in sys.meta_path):
    sys.meta_path.insert(0, _TorchvisionOpsShim())
EOF
log "wrote $site/sitecustomize.py"

# 4) smoke import (one thread; the machine is shared)
log "smoke import"
( cd / && OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore "$VPY" - <<'EOF'
import torch, torchvision
import aimet_torch
from aimet_torch.auto_quant import AutoQuant, AutoQuantWithAutoMixedPrecision  # noqa: F401
from aimet_torch.adaround import AdaroundParameters  # noqa: F401
from aimet_torch.common.defs import QuantScheme  # noqa: F401
from aimet_torch.quantsim import QuantizationSimModel  # noqa: F401
print(f"aimet-torch {aimet_torch.__version__} | torch {torch.__version__} | "
      f"torchvision {torchvision.__version__} (compiled ops shimmed) | OK")
EOF
)

t1=$(date +%s)
log "done in $((t1 - t0)) s; venv size $(du -sh "$VENV" | cut -f1) at $VENV"
log "run:  OMP_NUM_THREADS=1 $VPY $repo/benchmarks/_aimet_reference.py JOB.json"
