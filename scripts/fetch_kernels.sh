#!/usr/bin/env bash
# Download (on a machine WITH network) what setup_kernels.sh installs on an offline GPU machine.
#   bash scripts/fetch_kernels.sh [DEST_DIR]   (default .src; ignored by git)
set -euo pipefail
DEST=${1:-.src}
mkdir -p "$DEST"
PY=${PYTHON:-.venv/bin/python}   # needs torch installed (mamba-ssm's setup.py imports it)
$PY -m pip download -q --no-deps -d "$DEST" fla-core==0.6.0 flash-linear-attention==0.6.0
# the source archive only: skip the CUDA build while pip reads its metadata
MAMBA_SKIP_CUDA_BUILD=TRUE $PY -m pip download -q --no-deps --no-build-isolation --no-binary :all: \
  -d "$DEST" mamba-ssm==2.3.2.post1
CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE $PY -m pip download -q --no-deps --no-build-isolation --no-binary :all: \
  -d "$DEST" causal-conv1d==1.7.0
ls -la "$DEST"
