#!/usr/bin/env bash
# Creates .venv (if missing), installs the Python dependencies and builds and
# installs sparsellm into it (the CUDA library included).
#   scripts/setup.sh            # then: .venv/bin/python -m sparsellm.bench spmm
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${SPARSELLM_VENV:-$root/.venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip
# Build tools and the CUDA libraries we link (wheels; a CUDA toolkit's own are used when present).
"$py" -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.25" ninja \
  "nvidia-cublas==13.0.2.14" "nvidia-nccl-cu13==2.28.9"
# Runtime and test dependencies.
"$py" -m pip install -q "torch==2.13.0" numpy safetensors transformers tqdm pytest matplotlib
if command -v mpicc >/dev/null 2>&1; then "$py" -m pip install -q mpi4py; fi
"$py" -m pip install -q --no-build-isolation --no-deps "$root"
echo "sparsellm installed into $venv"
