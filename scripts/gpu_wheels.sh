#!/usr/bin/env bash
# Download the wheels scripts/gpu_runner.sh needs (requirements/gpu-runner.txt) for a GPU machine that
# has PyTorch but no package registry. Run it where pip reaches PyPI, then copy the folder along.
#   [VLLM=1] scripts/gpu_wheels.sh [DEST=.whl] [PYTHON_VERSION=3.12]
# VLLM=1: also vLLM 0.26.0 and what it needs (requirements/gpu-vllm.txt), for a machine with torch 2.11 (CUDA 13).
set -euo pipefail
dest=${1:-.whl}
pyver=${2:-3.12}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$dest"
# --no-deps: the list is complete on purpose; the GPU machine's own numpy/torch/transformers must not be shadowed
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$dest" -r "$here/requirements/gpu-runner.txt"
if [[ "${VLLM:-0}" == 1 ]]; then
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$dest" -r "$here/requirements/gpu-vllm.txt"
fi
echo "$(ls "$dest"/*.whl | wc -l) wheels, $(du -sh "$dest" | cut -f1) in $dest"
