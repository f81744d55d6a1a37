#!/usr/bin/env bash
# The GPU runner (`make gpu-run`): every lab's solution and every lecture, headless with papermill, on
# the `cuda` profile with full parameters, checked against autograder/thresholds/cuda.yaml; the same
# summary table and report as `make run`, under results/gpu/<gpu>/ (REPORT_DIR=... to change).
#
# Where it runs:
#   * the full stack (environment.yml, the Dockerfile): papermill, TensorRT and vLLM are there;
#   * a bare NVIDIA machine with only PyTorch and its scientific stack, no package registry: bring
#     the wheels of requirements/gpu-runner.txt (scripts/gpu_wheels.sh; VLLM=1 adds vLLM 0.26.0 for torch 2.11,
#     requirements/gpu-vllm.txt) and pass WHEELS=<folder>.
#     Each notebook then takes the best real path it finds (TensorRT missing: PyTorch FP16 with CUDA
#     graphs; vLLM missing: transformers' continuous batching) and the report lists which.
#
#   scripts/gpu_runner.sh [runner options, e.g. --only lab03 --keep]
#   env: PYTHON (default python3), WHEELS (wheel folder), REPORT_DIR, INCLUDE (default labs,lectures)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
python=${PYTHON:-python3}

if ! "$python" -c "import papermill, ipykernel" 2>/dev/null; then
  if [[ -z "${WHEELS:-}" ]]; then
    echo "error: papermill/ipykernel are not importable by $python; install the course environment" \
         "(environment.yml) or pass WHEELS=<folder made by scripts/gpu_wheels.sh>" >&2
    exit 2
  fi
  site="$repo/.cache/gpu-site"
  # --no-deps and a private target: the machine's own torch, numpy and transformers stay as they are
  "$python" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --upgrade \
      --target "$site" "$WHEELS"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  # the wheels' data files (nbconvert's HTML templates: the report's notebook pages) land in $site/share/jupyter
  export JUPYTER_PATH="$site/share/jupyter${JUPYTER_PATH:+:$JUPYTER_PATH}"
  echo "installed $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $site"
  # vLLM from wheels (VLLM=1 scripts/gpu_wheels.sh): FlashInfer's sampler compiles its kernels on first use, with an
  # nvcc such a machine lacks; vLLM's own sampler needs none (as the H200 record ran)
  if [[ -d "$site/vllm" ]]; then export VLLM_USE_FLASHINFER_SAMPLER=${VLLM_USE_FLASHINFER_SAMPLER:-0}; fi
fi
# the course library from this checkout, also without `pip install -e .`
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

# offline and self-contained, as in the Makefile
cache="$repo/.cache"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 HF_HOME="$cache/huggingface" \
       VLLM_CACHE_ROOT="$cache/vllm" JUPYTER_CONFIG_DIR="$cache/jupyter/config" JUPYTER_DATA_DIR="$cache/jupyter/data" \
       JUPYTER_RUNTIME_DIR="$cache/jupyter/runtime" IPYTHONDIR="$cache/ipython" MPLCONFIGDIR="$cache/matplotlib"

gpu=$("$python" -c "import torch; assert torch.cuda.is_available(), 'PyTorch sees no CUDA GPU'; print(torch.cuda.get_device_name())") || {
  echo "error: the GPU runner needs an NVIDIA GPU that PyTorch sees (profile cuda)" >&2; exit 2; }
slug=$(echo "$gpu" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/^-//; s/-$//')
out=${REPORT_DIR:-results/gpu/$slug}
echo "GPU runner on $gpu -> $out"
exec "$python" -m optcourse.course.runner --profile cuda --full --include "${INCLUDE:-labs,lectures}" --out "$out" "$@"
