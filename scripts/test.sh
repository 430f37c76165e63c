#!/usr/bin/env bash
# Runs every test this machine can run: sets up .venv (scripts/setup.sh, which
# builds and installs the package), builds the C++ tests with CMake and runs
# ctest, then pytest against the installed package. GPU tests skip without a GPU.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
"$root/scripts/setup.sh"
py="${SPARSELLM_VENV:-$root/.venv}/bin/python"
build="$root/build/tests"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPARSELLM_BUILD_PYTHON=OFF \
  -DPython_EXECUTABLE="$py"
cmake --build "$build" -j "$(nproc)"
ctest --test-dir "$build" --output-on-failure
cd "$root/tests/python"  # import the installed package, not the source tree
"$py" -m pytest "$root/tests/python" -q -rs
