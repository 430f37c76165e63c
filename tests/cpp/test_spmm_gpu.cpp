// Tiled-CSL SpMM against cuBLAS on the same masked weights. Small enough to run
// under compute-sanitizer (memcheck, racecheck); the wide grid lives in pytest.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/check.h"
#include "sparsellm/device.h"
#include "sparsellm/gemm.h"
#include "sparsellm/spmm.h"
#include "sparsellm/tiled_csl.h"

namespace sparsellm {
namespace {

template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  explicit DeviceBuffer(size_t count) { SPARSELLM_CHECK_CUDA(cudaMalloc(&ptr, std::max<size_t>(count, 1) * sizeof(T))); }
  DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
    SPARSELLM_CHECK_CUDA(cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  std::vector<T> download(size_t count) const {
    std::vector<T> out(count);
    SPARSELLM_CHECK_CUDA(cudaMemcpy(out.data(), ptr, count * sizeof(T), cudaMemcpyDeviceToHost));
    return out;
  }
};

uint16_t to_bits(float v, DType t) {
  return t == DType::kFloat16 ? __half_as_ushort(__float2half(v)) : __bfloat16_as_ushort(__float2bfloat16(v));
}
float from_bits(uint16_t b, DType t) {
  return t == DType::kFloat16 ? __half2float(__ushort_as_half(b)) : __bfloat162float(__ushort_as_bfloat16(b));
}

using Case = std::tuple<int64_t, int64_t, int64_t, double, DType>;  // m, k, n, sparsity, dtype

class SpmmVsCublas : public ::testing::TestWithParam<Case> {};

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const auto& [m, k, n, sparsity, dtype] = info.param;
  return "m" + std::to_string(m) + "_k" + std::to_string(k) + "_n" + std::to_string(n) + "_s" +
         std::to_string(int(sparsity * 100)) + (dtype == DType::kFloat16 ? "_fp16" : "_bf16");
}

TEST_P(SpmmVsCublas, MatchesOnTheSameMaskedWeights) {
  if (device_count() == 0) GTEST_SKIP() << "no GPU";
  const auto [m, k, n, sparsity, dtype] = GetParam();
  std::mt19937 rng(uint32_t(m * 131 + k * 7 + n) ^ uint32_t(sparsity * 1000));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<uint16_t> w(m * k), x(n * k), bias(m);
  for (auto& v : w) v = u(rng) < sparsity ? 0 : to_bits(normal(rng) * 0.05f, dtype);
  for (auto& v : x) v = to_bits(normal(rng), dtype);
  for (auto& v : bias) v = to_bits(normal(rng), dtype);

  const TiledCslHost enc = encode_tiled_csl(w.data(), m, k, dtype);
  const int blocks = spmm_plan_blocks();
  const std::vector<StreamKBlock> plan = spmm_plan(enc.tile_offsets.data(), m, k, blocks);
  DeviceBuffer<uint32_t> d_words(enc.words), d_offsets(enc.tile_offsets);
  DeviceBuffer<StreamKBlock> d_plan(plan);
  DeviceBuffer<uint16_t> d_w(w), d_x(x), d_bias(bias), d_y(n * m), d_ref(n * m);
  const size_t ws_bytes = spmm_workspace_bytes(m, n, blocks);
  DeviceBuffer<char> ws(ws_bytes), gemm_ws(kDenseGemmWorkspaceBytes);
  SPARSELLM_CHECK_CUDA(cudaMemset(ws.ptr, 0, ws_bytes));
  SPARSELLM_CHECK_CUDA(cudaMemset(d_y.ptr, 0xFF, n * m * 2));  // poison: NaN in both dtypes

  SpmmParams p;
  p.x = d_x.ptr;
  p.bias = d_bias.ptr;
  p.y = d_y.ptr;
  p.n = n;
  p.weight = {d_words.ptr, d_offsets.ptr, m, k, dtype};
  p.plan = d_plan.ptr;
  p.plan_blocks = blocks;
  p.workspace = ws.ptr;
  p.workspace_bytes = ws_bytes;
  DenseGemmParams g;
  g.x = d_x.ptr;
  g.w = d_w.ptr;
  g.bias = d_bias.ptr;
  g.y = d_ref.ptr;
  g.n = n;
  g.m = m;
  g.k = k;
  g.dtype = dtype;
  g.workspace = gemm_ws.ptr;
  g.workspace_bytes = kDenseGemmWorkspaceBytes;
  for (int rep = 0; rep < 2; ++rep) {  // the second call checks the workspace was left reusable
    spmm_tiled_csl(p, nullptr);
    dense_gemm(g, nullptr);
    SPARSELLM_CHECK_CUDA(cudaDeviceSynchronize());
    const auto y = d_y.download(n * m), ref = d_ref.download(n * m);
    double num = 0, den = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      const double a = from_bits(y[i], dtype), b = from_bits(ref[i], dtype);
      ASSERT_TRUE(std::isfinite(a)) << "element " << i << " not written";
      num += (a - b) * (a - b);
      den += b * b;
    }
    const double tol = dtype == DType::kFloat16 ? 2e-3 : 1.5e-2;
    EXPECT_LT(std::sqrt(num / den), tol);
    SPARSELLM_CHECK_CUDA(cudaMemset(d_y.ptr, 0xFF, n * m * 2));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Grid, SpmmVsCublas,
    ::testing::Values(Case{64, 172, 1, 0.5, DType::kFloat16}, Case{1000, 3000, 7, 0.7, DType::kBFloat16},
                      Case{4097, 4095, 17, 0.9, DType::kFloat16}, Case{512, 1024, 64, 0.0, DType::kBFloat16},
                      Case{384, 256, 100, 0.99, DType::kFloat16}, Case{256, 512, 200, 0.5, DType::kFloat16},
                      Case{2048, 2048, 16, 0.8, DType::kBFloat16}),
    case_name);

TEST(SpmmArguments, RejectsTooSmallWorkspace) {
  if (device_count() == 0) GTEST_SKIP() << "no GPU";
  SpmmParams p;
  p.n = 4;
  p.weight.m = 128;
  p.weight.k = 64;
  p.x = p.y = reinterpret_cast<void*>(16);
  p.weight.words = p.weight.tile_offsets = reinterpret_cast<const uint32_t*>(16);
  p.plan = reinterpret_cast<const StreamKBlock*>(16);
  p.plan_blocks = 1;
  EXPECT_THROW(spmm_tiled_csl(p, nullptr), InvalidArgument);
}

}  // namespace
}  // namespace sparsellm
