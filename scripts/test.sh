#!/usr/bin/env bash
# Create (or reuse) the virtual environment and run the whole test suite.
# Usage: scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${ONENET_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# CPU build of torch first: a plain `torch` requirement would pull a multi-GB CUDA build.
"$VENV/bin/python" -m pip install --quiet "torch==${TORCH_VERSION:-2.13.0}"
"$VENV/bin/python" -m pip install --quiet -e ".[test,onnx,demo]"
# nnU-Net's network (optional peer `plainconvunet`): without its timm/torchvision dependencies, which replace CPU torch
"$VENV/bin/python" -m pip install --quiet --no-deps dynamic-network-architectures
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
"$VENV/bin/python" -m ruff check onenet_med tests scripts
# fast suite, then the end-to-end runs (tiny sizes) behind the `slow` marker
"$VENV/bin/python" -m pytest -q -m "not slow" "$@"
"$VENV/bin/python" -m pytest -q -m slow "$@"
