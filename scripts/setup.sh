#!/usr/bin/env bash
# Set up zigscan on a fresh machine, idempotently:
#   - a virtual environment in .venv (Python 3.10+),
#   - PyTorch: kept if present; else the CPU build on machines without an NVIDIA GPU (never a multi-GB
#     CUDA build on a CPU-only machine), the default (CUDA) build where a GPU is present,
#   - zigscan itself (editable) with its dev extras, and the example plugin (tests use it),
#   - the default dataset, Fashion-MNIST, from Debian's package dataset-fashion-mnist where apt exists.
# Usage: bash scripts/setup.sh        (env: PYTHON=python3.11, ZIGSCAN_TORCH="torch==2.13.0")
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH=${ZIGSCAN_TORCH:-torch==2.13.0}
export PIP_DISABLE_PIP_VERSION_CHECK=1

[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python

if ! "$VPY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] NVIDIA GPU found: installing $TORCH (CUDA build)"
    "$VPY" -m pip install -q "$TORCH"
  else
    echo "[setup] no GPU: installing the CPU build of $TORCH"
    # Machines of this project's kind keep the CPU wheel (local version "+cpu") on local disk, found by
    # pip's configured find-links; elsewhere PyTorch's CPU-only index serves it.
    if ! "$VPY" -m pip install -q "${TORCH}+cpu" 2>/dev/null; then
      "$VPY" -m pip install -q "$TORCH" --index-url https://download.pytorch.org/whl/cpu
    fi
  fi
fi
"$VPY" -c "import torch; print('[setup] torch', torch.__version__, '| CUDA available:', torch.cuda.is_available())"

echo "[setup] installing zigscan (editable, dev extras) and the example plugin"
"$VPY" -m pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
"$VPY" -m pip install -q --no-deps ./examples/zigscan-example-plugin 2>&1 | grep -v "^WARNING: Location" || true
"$VPY" -c "import zigscan.scanpaths, zigscan.backbones, zigscan.diffusion" # fails loudly if the install broke

FMNIST=/usr/share/datasets/fashion-mnist
if [ -z "${ZIGSCAN_FASHION_MNIST:-}" ] && [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
      || echo "[setup] WARNING: apt-get could not install dataset-fashion-mnist"
  elif command -v apt-get >/dev/null 2>&1; then
    echo "[setup] Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist'"
  else
    echo "[setup] Fashion-MNIST missing: put the four idx .gz files in a folder and export ZIGSCAN_FASHION_MNIST=that/folder"
  fi
fi
echo "[setup] done: activate with 'source .venv/bin/activate'"
