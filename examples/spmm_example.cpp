// Embedding sparsellm from C++: encode a pruned weight, run the sparse GEMM,
// and check it against cuBLAS on the same weights.
//
//   spmm_example [M K N sparsity]
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include <sparsellm/device.h>
#include <sparsellm/error.h>
#include <sparsellm/gemm.h>
#include <sparsellm/spmm.h>
#include <sparsellm/tiled_csl.h>

namespace {

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw sparsellm::CudaError(std::string(what) + ": " + cudaGetErrorString(status));
}

template <typename T>
T* upload(const std::vector<T>& host) {
  T* dev = nullptr;
  check(cudaMalloc(&dev, host.size() * sizeof(T)), "cudaMalloc");
  check(cudaMemcpy(dev, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy");
  return dev;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t m = argc > 1 ? std::atoll(argv[1]) : 4096, k = argc > 2 ? std::atoll(argv[2]) : 4096;
  const int64_t n = argc > 3 ? std::atoll(argv[3]) : 16;
  const double sparsity = argc > 4 ? std::atof(argv[4]) : 0.8;
  try {
    const sparsellm::DeviceInfo& gpu = sparsellm::current_device();
    std::printf("GPU %s, %d SMs\n", gpu.name.c_str(), gpu.sm_count);

    std::mt19937 rng(1234);
    std::normal_distribution<float> normal(0.0f, 0.02f);
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    std::vector<uint16_t> w(m * k), x(n * k);
    for (auto& v : w) v = uniform(rng) < sparsity ? 0 : __half_as_ushort(__float2half(normal(rng)));
    for (auto& v : x) v = __half_as_ushort(__float2half(normal(rng) * 50.0f));

    const sparsellm::TiledCslHost enc = sparsellm::encode_tiled_csl(w.data(), m, k, sparsellm::DType::kFloat16);
    std::printf("W %lldx%lld: %lld nonzeros, %.1f MB encoded (dense %.1f MB)\n", (long long)m, (long long)k,
                (long long)enc.nnz, enc.words.size() * 4e-6, m * k * 2e-6);
    const int blocks = sparsellm::spmm_plan_blocks();
    const std::vector<sparsellm::StreamKBlock> plan = sparsellm::spmm_plan(enc.tile_offsets.data(), m, k, blocks);

    uint32_t* d_words = upload(enc.words);
    uint32_t* d_offsets = upload(enc.tile_offsets);
    sparsellm::StreamKBlock* d_plan = upload(plan);
    uint16_t* d_w = upload(w);
    uint16_t* d_x = upload(x);
    uint16_t *d_y = nullptr, *d_ref = nullptr;
    check(cudaMalloc(&d_y, n * m * 2), "cudaMalloc");
    check(cudaMalloc(&d_ref, n * m * 2), "cudaMalloc");
    const size_t ws_bytes = sparsellm::spmm_workspace_bytes(m, n, blocks);
    void *ws = nullptr, *gemm_ws = nullptr;
    check(cudaMalloc(&ws, ws_bytes), "cudaMalloc");
    check(cudaMemset(ws, 0, ws_bytes), "cudaMemset");
    check(cudaMalloc(&gemm_ws, sparsellm::kDenseGemmWorkspaceBytes), "cudaMalloc");
    cudaStream_t stream;
    check(cudaStreamCreate(&stream), "cudaStreamCreate");

    sparsellm::SpmmParams p;
    p.x = d_x;
    p.y = d_y;
    p.n = n;
    p.weight = {d_words, d_offsets, m, k, sparsellm::DType::kFloat16};
    p.plan = d_plan;
    p.plan_blocks = blocks;
    p.workspace = ws;
    p.workspace_bytes = ws_bytes;
    sparsellm::spmm_tiled_csl(p, stream);

    sparsellm::DenseGemmParams g;
    g.x = d_x;
    g.w = d_w;
    g.y = d_ref;
    g.n = n;
    g.m = m;
    g.k = k;
    g.workspace = gemm_ws;
    g.workspace_bytes = sparsellm::kDenseGemmWorkspaceBytes;
    sparsellm::dense_gemm(g, stream);
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");

    std::vector<uint16_t> y(n * m), ref(n * m);
    check(cudaMemcpy(y.data(), d_y, y.size() * 2, cudaMemcpyDeviceToHost), "cudaMemcpy");
    check(cudaMemcpy(ref.data(), d_ref, ref.size() * 2, cudaMemcpyDeviceToHost), "cudaMemcpy");
    double num = 0, den = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      const double a = __half2float(__ushort_as_half(y[i])), b = __half2float(__ushort_as_half(ref[i]));
      num += (a - b) * (a - b);
      den += b * b;
    }
    const double rel = std::sqrt(num / std::max(den, 1e-30));
    std::printf("relative error vs cuBLAS on the same weights: %.2e\n", rel);
    return rel < 1e-2 ? 0 : 1;
  } catch (const sparsellm::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}
