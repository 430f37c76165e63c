#!/usr/bin/env bash
# The GPU check: builds from a clean tree, runs ctest, every pytest test (GPU
# ones included), compute-sanitizer memcheck and racecheck on the kernel test
# binary, and the benchmarks; writes logs and a summary into OUTDIR.
#
#   scripts/gpu_check.sh OUTDIR [--bench full|quick|none] [--deps-prefix DIR] [--multigpu]
#                        [--skip ctest,sanitizers,pytest]
#
# The benchmark (unless --bench none) is the SpMM benchmark and the weight-stream
# microbenchmark (cpp/bench/copy_pipeline.cu, sm_90 only).
# --skip leaves the named steps out (to split one check over several runs).
# PYTEST_WORKERS=N runs pytest in N processes (pytest-xdist); PYTEST_DIST picks
# how tests are shared out (default loadfile: one test file per process).
#
# --multigpu (a machine with 2 or 4 GPUs, mpirun and mpi4py): configure, build,
# then only the tensor-parallel tests: ctest -L multigpu (the NCCL communicator,
# tests/cpp/test_communicator_gpu.cpp) and tests/python/test_tensor_parallel.py
# (TP = 1/2/4 under mpirun, launch errors, a dead rank, the C++ example).
#
# Needs: an NVIDIA GPU (sm_80+), CUDA toolkit (nvcc, cuBLAS), NCCL, a python3
# with torch, numpy, pybind11, pytest (transformers, safetensors for the
# model tests). Nothing is downloaded. Without GoogleTest or nlohmann-json on
# the machine, pass --deps-prefix DIR: a relocatable install prefix holding
# them (include/{gtest,nlohmann}, lib/<arch>/{libgtest*.a,cmake/GTest},
# share/cmake/nlohmann_json: the files of Debian's libgtest-dev and
# nlohmann-json3-dev).
set -uo pipefail

out=${1:?usage: gpu_check.sh OUTDIR [--bench full|quick|none] [--deps-prefix DIR]}
shift
bench=quick
deps_prefix=""
multigpu=0
skip=","
while [ $# -gt 0 ]; do
  case $1 in
    --bench) bench=$2; shift 2 ;;
    --deps-prefix) deps_prefix=$2; shift 2 ;;
    --multigpu) multigpu=1; shift ;;
    --skip) skip=",$2,"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
cuda_home=${CUDA_HOME:-/usr/local/cuda}
export PATH="$cuda_home/bin:$PATH"
summary="$out/summary.md"
status=0
step() {  # step NAME CMD...: runs CMD, logs to OUTDIR/NAME.log, records the result
  local name=$1; shift
  local t0=$(date +%s)
  "$@" >"$out/$name.log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  local tail_line=$(grep -E "passed|failed|tests passed|ERROR SUMMARY|error" "$out/$name.log" | tail -n 1)
  printf '| %s | %s | %ss | %s |\n' "$name" "$([ $rc -eq 0 ] && echo ok || echo "FAILED ($rc)")" "$dt" "$tail_line" >>"$summary"
  [ $rc -eq 0 ] || status=1
  echo "== $name: rc=$rc (${dt}s) $tail_line"
  return $rc
}

{
  echo "# GPU check $(date -u +%Y-%m-%dT%H:%MZ) commit ${SPARSELLM_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  nvcc --version | tail -n 1
  $python -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__)"
  echo '```'
  echo
  echo "| step | result | time | last line |"
  echo "|---|---|---|---|"
} >"$summary"

build="$root/build/gpu-check"
rm -rf "$build"
cmake_args=(-S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSPARSELLM_PTXAS_VERBOSE=ON
  -DPython_EXECUTABLE="$(command -v $python)" -Dpybind11_DIR="$($python -m pybind11 --cmakedir)"
  -DSPARSELLM_DEV_LINKS=ON)
[ -n "$deps_prefix" ] && cmake_args+=(-DCMAKE_PREFIX_PATH="$deps_prefix" -DGTest_ROOT="$deps_prefix")
step configure cmake "${cmake_args[@]}" || { cat "$summary"; exit 1; }
step build cmake --build "$build" -j "$(nproc)" || { cat "$summary"; exit 1; }
grep -A2 "Compiling entry" "$out/build.log" | grep -E "entry|registers|spill" >"$out/ptxas.txt" || true

if [ $multigpu -eq 1 ]; then  # the tensor-parallel tests only
  nvidia-smi topo -m >"$out/topology.txt" 2>&1 || true
  export PYTHONPATH="$root/python${PYTHONPATH:+:$PYTHONPATH}"
  export SPARSELLM_GENERATE_EXAMPLE="$build/examples/generate"
  step ctest_multigpu ctest --test-dir "$build" -L multigpu --output-on-failure
  step pytest_multigpu timeout "${PYTEST_TIMEOUT_S:-1800}" $python -m pytest tests/python/test_tensor_parallel.py \
    -v -rs -s --junitxml="$out/pytest-multigpu.xml"
  echo >>"$summary"
  [ $status -eq 0 ] && echo "All steps passed." >>"$summary" || echo "SOME STEPS FAILED." >>"$summary"
  cat "$summary"
  exit $status
fi

skipped() { [[ $skip == *",$1,"* ]]; }
skipped ctest || step ctest ctest --test-dir "$build" --output-on-failure -j 4
test_gpu="$build/tests/cpp/test_gpu"
if [ -x "$test_gpu" ] && ! skipped sanitizers; then
  # The statistical sampling test and the 4,000-token attention case are slow under the sanitizer.
  step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 "$test_gpu" \
    --gtest_filter='-*StepsFollow*:*LongContext*'
  step racecheck compute-sanitizer --tool racecheck --error-exitcode 1 "$test_gpu" \
    --gtest_filter='*SpmmVsCublas*m64_*:*SpmmVsCublas*m512_*:*SpmmVsCublas*m384_*:*AttentionTest.Prefill*:*SamplingDtype.TopK*'
fi
export PYTHONPATH="$root/python${PYTHONPATH:+:$PYTHONPATH}"
pytest_workers=()
[ -n "${PYTEST_WORKERS:-}" ] && pytest_workers=(-n "$PYTEST_WORKERS" --dist "${PYTEST_DIST:-loadfile}")
skipped pytest || step pytest timeout "${PYTEST_TIMEOUT_S:-900}" $python -m pytest tests/python "${pytest_workers[@]}" -v -rs \
  --durations=15 --junitxml="$out/pytest.xml"
case $bench in
  full) step bench_spmm $python -m sparsellm.bench spmm --out "$out/bench" ;;
  quick) step bench_spmm $python -m sparsellm.bench spmm --out "$out/bench" --shapes anchor --ns 1,8,16,32,64,128 \
           --dtypes float16 --formats tiled_csl,bitmap --no-baselines --reps 30 ;;
  none) ;;
esac
compute_cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1)
if [ "$bench" != none ] && [ -x "$build/cpp/bench/copy_pipeline" ] && [ "${compute_cap%%.*}" -ge 9 ] 2>/dev/null; then
  step bench_copy_pipeline "$build/cpp/bench/copy_pipeline" "$out/bench"
fi
echo >>"$summary"
[ $status -eq 0 ] && echo "All steps passed." >>"$summary" || echo "SOME STEPS FAILED." >>"$summary"
cat "$summary"
exit $status
