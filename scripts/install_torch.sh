#!/usr/bin/env bash
# Install PyTorch into the given Python environment, choosing the right build:
#   - torch already importable: keep it (never replace a working install);
#   - an NVIDIA GPU is visible (nvidia-smi): the normal PyPI build, which ships CUDA;
#   - no GPU: the CPU build (a local wheel directory if pip has one configured, such as an
#     offline mirror, otherwise PyTorch's CPU index), never the multi-GB CUDA build.
# Usage: scripts/install_torch.sh PYTHON   (TORCH_VERSION overrides the CPU version)
set -euo pipefail
PY="${1:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

if "$PY" -c "import torch" 2>/dev/null; then
    echo "install_torch: torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
    exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "install_torch: NVIDIA GPU found, installing the CUDA build from PyPI"
    "$PY" -m pip install "torch>=2.13"
elif "$PY" -m pip install --no-deps --no-index "torch==${TORCH_VERSION}" >/dev/null 2>&1; then
    echo "install_torch: no GPU, installed the local CPU wheel of torch ${TORCH_VERSION}"
    "$PY" -m pip install -q "torch==${TORCH_VERSION}"   # its dependencies
else
    echo "install_torch: no GPU, installing the CPU build from PyTorch's CPU index"
    "$PY" -m pip install "torch==${TORCH_VERSION}" \
        --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple
fi
