#!/usr/bin/env bash
# Install PyTorch into the virtual environment given as $1, choosing the build for this machine:
#   - a torch that the environment can already import (e.g. a user's CUDA build) is kept;
#   - a machine with an NVIDIA GPU gets the default (CUDA) wheel from PyPI;
#   - anything else gets the CPU build, never the multi-GB CUDA wheels.
# PARTKD_TORCH_VERSION overrides the CPU version (default 2.13.0, which a local wheel satisfies on our machines).
set -euo pipefail
venv="$1"
py="$venv/bin/python"
version="${PARTKD_TORCH_VERSION:-2.13.0}"

if "$py" -c "import torch" 2>/dev/null; then
    echo "install-torch: keeping torch $("$py" -c 'import torch; print(torch.__version__)')"
    exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "install-torch: NVIDIA GPU found, installing the default CUDA build of torch"
    "$py" -m pip install --quiet "torch>=2.4"
    exit 0
fi
echo "install-torch: no GPU, installing the CPU build of torch==$version"
# A local or mirrored '+cpu' wheel (as on our CI machines) is taken first; otherwise PyTorch's CPU index.
"$py" -m pip install --quiet --only-binary=:all: "torch==$version+cpu" 2>/dev/null \
    || "$py" -m pip install --quiet --only-binary=:all: "torch==$version" --index-url https://download.pytorch.org/whl/cpu
