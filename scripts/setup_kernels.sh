#!/usr/bin/env bash
# Install zigscan and its optional GPU kernels on a CUDA machine WITHOUT network access.
#   bash scripts/setup_kernels.sh [SRC_DIR]
# SRC_DIR (default .src) holds what `scripts/fetch_kernels.sh` downloaded on a machine with network:
#   mamba_ssm-2.3.2.post1.tar.gz and causal_conv1d-1.7.0.tar.gz (source archives), fla_core-0.6.0 and
#   flash_linear_attention-0.6.0 wheels.
# mamba-ssm and causal-conv1d are built for sm_90 (H100/H200) only, which takes about 2 minutes each instead
# of ~20 for all archs. causal-conv1d is optional: without it Mamba runs its conv1d in plain PyTorch and
# cannot take mamba-ssm's fused, memory-saving `mamba_inner_fn` path.
# PARTS (default "zigscan fla mamba conv1d") picks what to install, e.g. PARTS=mamba to build mamba-ssm in
# the background while fla kernels already run.
set -euo pipefail
SRC=$(realpath "${1:-.src}")
PY=${PYTHON:-python3}
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
PARTS=${PARTS:-zigscan fla mamba conv1d}
t0=$(date +%s)
if [[ " $PARTS " == *" zigscan "* ]]; then
  $PY -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING" || true
fi
if [[ " $PARTS " == *" fla "* ]]; then
  $PY -m pip install -q --no-deps "$SRC"/fla_core-*.whl "$SRC"/flash_linear_attention-*.whl 2>&1 | grep -v "^WARNING" || true
fi
build_sm90() {  # build_sm90 ARCHIVE_GLOB FORCE_VAR: pip-install a CUDA source archive for sm_90 only
  local work
  work=$(mktemp -d)
  tar xzf $1 -C "$work"
  (cd "$work"/*/ && $PY - <<'PYEOF'
# Keep only sm_90: replace the list of -gencode flags after setup.py built it (same marker in both packages).
s = open("setup.py").read()
marker = 'cc_flag.append("arch=compute_121,code=sm_121")'
i = s.index(marker) + len(marker)
s = s[:i] + '\n        cc_flag = [f for f in cc_flag if not f.startswith(("-gencode", "arch="))] + ["-gencode", "arch=compute_90,code=sm_90"]' + s[i:]
open("setup.py", "w").write(s)
PYEOF
  env "$2=TRUE" MAX_JOBS=${MAX_JOBS:-16} $PY -m pip install -q --no-deps --no-build-isolation . 2>&1 | grep -v "^WARNING" | tail -5)
}
if [[ " $PARTS " == *" mamba "* ]] && ! $PY -c "import mamba_ssm" 2>/dev/null; then
  build_sm90 "$SRC/mamba_ssm-*.tar.gz" MAMBA_FORCE_BUILD
fi
if [[ " $PARTS " == *" conv1d "* ]] && ! $PY -c "import causal_conv1d" 2>/dev/null; then
  build_sm90 "$SRC/causal_conv1d-*.tar.gz" CAUSAL_CONV1D_FORCE_BUILD
fi
$PY - <<'PYEOF'
import importlib, importlib.util
print(" | ".join(f"{m} {getattr(importlib.import_module(m), '__version__', '?')}" if importlib.util.find_spec(m)
                 else f"{m} not installed" for m in ("zigscan", "fla", "mamba_ssm", "causal_conv1d")))
PYEOF
echo "kernels ready in $(( $(date +%s) - t0 )) s"
