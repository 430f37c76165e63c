// SpMM (Tiled-CSL, bitmap and split 2:4 weights) against cuBLAS on the same masked
// weights. Small enough to run under compute-sanitizer (memcheck, racecheck);
// the wide grid lives in pytest.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/check.h"
#include "sparsellm/device.h"
#include "sparsellm/bitmap.h"
#include "sparsellm/gemm.h"
#include "sparsellm/spmm.h"
#include "sparsellm/split24.h"
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

// y = x [n, k] · Wᵀ (+ bias) by an encoded weight, under a plan of plan_blocks blocks, in `workspace`.
SpmmParams spmm_call(const void* x, const void* bias, void* y, int64_t n, const SparseMatrixView& weight,
                     const StreamKBlock* plan, int plan_blocks, void* workspace, size_t workspace_bytes) {
  return {x, bias, y, /*relu=*/false, n, weight, plan, plan_blocks, workspace, workspace_bytes, /*norm=*/{}};
}

// m, k, n, sparsity (kUneven: the first half of the rows dense, the rest 99% sparse), dtype
using Shape = std::tuple<int64_t, int64_t, int64_t, double, DType>;
using Case = std::tuple<SparseFormat, Shape>;
constexpr double kUneven = -1.0;

class SpmmVsCublas : public ::testing::TestWithParam<Case> {};

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const auto& [format, shape] = info.param;
  const auto& [m, k, n, sparsity, dtype] = shape;
  return std::string(sparse_format_name(format)) + "_m" + std::to_string(m) + "_k" +
         std::to_string(k) + "_n" + std::to_string(n) +
         (sparsity == kUneven ? std::string("_uneven") : "_s" + std::to_string(int(sparsity * 100))) +
         (dtype == DType::kFloat16 ? "_fp16" : "_bf16");
}

// The weight in `format`: tile offsets and data words (host).
std::pair<std::vector<uint32_t>, std::vector<uint32_t>> encode(SparseFormat format, const std::vector<uint16_t>& w,
                                                               int64_t m, int64_t k, DType dtype) {
  if (format == SparseFormat::kBitmap) {
    BitmapHost enc = encode_bitmap(w.data(), m, k, dtype);
    return {std::move(enc.tile_offsets), std::move(enc.data)};
  }
  if (format == SparseFormat::kSplit24) {
    Split24Host enc = encode_split24(w.data(), m, k, dtype);
    return {std::move(enc.tile_offsets), std::move(enc.data)};
  }
  TiledCslHost enc = encode_tiled_csl(w.data(), m, k, dtype);
  return {std::move(enc.tile_offsets), std::move(enc.words)};
}

// Y of the SpMM of a random weight in `format` against cuBLAS on the same masked weight, twice (the
// second call checks the workspace was left reusable: its first spmm_workspace_scratch_offset()
// bytes zero, and junk past them, where a caller may keep scratch, changes nothing). The plan is
// spmm_plan's of `blocks` blocks or, given `ranges` (range starts and the tile count), those ranges'.
// With relu both apply it in their epilogues, and cuBLAS's result is checked against max(·, 0) of its
// plain product as well.
void expect_matches_cublas(SparseFormat format, const Shape& shape, int blocks,
                           const std::vector<int32_t>& ranges = {}, bool relu = false) {
  const auto [m, k, n, sparsity, dtype] = shape;
  std::mt19937 rng(uint32_t(m * 131 + k * 7 + n) ^ uint32_t(sparsity * 1000 + 5000));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<uint16_t> w(m * k), x(n * k), bias(m);
  for (int64_t i = 0; i < m * k; ++i) {
    const double s = sparsity != kUneven ? sparsity : (i / k < m / 2 ? 0.0 : 0.99);
    w[i] = u(rng) < s ? 0 : to_bits(normal(rng) * 0.05f, dtype);
  }
  for (auto& v : x) v = to_bits(normal(rng), dtype);
  for (auto& v : bias) v = to_bits(normal(rng), dtype);

  const auto [tile_offsets, words] = encode(format, w, m, k, dtype);
  const std::vector<StreamKBlock> plan =
      ranges.empty() ? spmm_plan(tile_offsets.data(), m, k, blocks) : spmm_plan_of_ranges(ranges, m, k);
  blocks = int(plan.size());
  DeviceBuffer<uint32_t> d_words(words), d_offsets(tile_offsets);
  DeviceBuffer<StreamKBlock> d_plan(plan);
  DeviceBuffer<uint16_t> d_w(w), d_x(x), d_bias(bias), d_y(n * m), d_ref(n * m), d_plain(n * m);
  const size_t ws_bytes = spmm_workspace_bytes(m, n, blocks);
  DeviceBuffer<char> ws(ws_bytes), gemm_ws(kDenseGemmWorkspaceBytes);
  SPARSELLM_CHECK_CUDA(cudaMemset(ws.ptr, 0, ws_bytes));
  SPARSELLM_CHECK_CUDA(cudaMemset(d_y.ptr, 0xFF, n * m * 2));  // poison: NaN in both dtypes

  SpmmParams p = spmm_call(d_x.ptr, d_bias.ptr, d_y.ptr, n, {d_words.ptr, d_offsets.ptr, m, k, dtype, format},
                           d_plan.ptr, blocks, ws.ptr, ws_bytes);
  p.relu = relu;
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
  DenseGemmParams plain = g;
  plain.y = d_plain.ptr;
  g.relu = relu;
  std::vector<uint16_t> first_y;
  for (int rep = 0; rep < 2; ++rep) {
    spmm(p, nullptr);
    dense_gemm(g, nullptr);
    if (relu) dense_gemm(plain, nullptr);
    SPARSELLM_CHECK_CUDA(cudaDeviceSynchronize());
    const auto y = d_y.download(n * m), ref = d_ref.download(n * m);
    const double tol = dtype == DType::kFloat16 ? 2e-3 : 1.5e-2;
    if (relu) {  // cuBLAS's relu epilogue against its plain product (its algorithm may differ: a tolerance)
      const auto unclipped = d_plain.download(n * m);
      size_t clipped = 0;
      double num = 0, den = 0;
      for (size_t i = 0; i < y.size(); ++i) {
        const double r = from_bits(ref[i], dtype), u = from_bits(unclipped[i], dtype), want = std::max(u, 0.0);
        ASSERT_GE(from_bits(y[i], dtype), 0.0f) << "element " << i;
        ASSERT_GE(r, 0.0) << "cuBLAS element " << i;
        num += (r - want) * (r - want);
        den += want * want;
        clipped += u < 0.0;
      }
      EXPECT_LT(std::sqrt(num / den), tol) << "cuBLAS's relu epilogue";
      EXPECT_GT(clipped, y.size() / 4) << "too few negative products to test the clipping";
    }
    double num = 0, den = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      const double a = from_bits(y[i], dtype), b = from_bits(ref[i], dtype);
      ASSERT_TRUE(std::isfinite(a)) << "element " << i << " not written";
      num += (a - b) * (a - b);
      den += b * b;
    }
    EXPECT_LT(std::sqrt(num / den), tol);
    // The shared rows are summed in block order whoever sums them: the same bits every call.
    if (rep == 0) first_y = y;
    else EXPECT_TRUE(y == first_y) << "two calls gave different results";
    SPARSELLM_CHECK_CUDA(cudaMemset(d_y.ptr, 0xFF, n * m * 2));
    const size_t kept = spmm_workspace_scratch_offset();
    const std::vector<char> head = ws.download(kept);
    EXPECT_EQ(size_t(std::count(head.begin(), head.end(), char(0))), kept) << "the workspace was not left zero";
    SPARSELLM_CHECK_CUDA(cudaMemset(ws.ptr + kept, 0xA5, ws_bytes - kept));
  }
}

TEST_P(SpmmVsCublas, MatchesOnTheSameMaskedWeights) {
  if (device_count() == 0) GTEST_SKIP() << "no GPU";
  const auto [format, shape] = GetParam();
  expect_matches_cublas(format, shape, spmm_plan_blocks());
}

// Plans of a few blocks, whose ranges span several tile rows: a shared first
// row, rows of their own, a shared or an own last row (384 rows over 2 blocks:
// the second block ends with a whole row).
TEST(SpmmFewBlocks, RangesOverSeveralRowsMatchCublas) {
  if (device_count() == 0) GTEST_SKIP() << "no GPU";
  for (SparseFormat format : kSparseFormats)
    for (int64_t m : {384, 1000})
      for (int blocks : {2, 3, 7})
        for (int64_t n : {3, 16, 32, 64, 128}) {
          SCOPED_TRACE(std::string(sparse_format_name(format)) + " m " +
                       std::to_string(m) + " blocks " + std::to_string(blocks) + " n " + std::to_string(n));
          expect_matches_cublas(format, Shape{m, 3000, n, 0.6, DType::kFloat16}, blocks);
        }
}

// Which owner of a shared row sums it depends on which arrives last. Ranges that
// make either one the likely last: a lead with one tile of row 0 and a block that
// crosses into row 1 after the rest of row 0 (it arrives last), or a lead with all
// of row 0 but one tile (the crossing block arrives first).
TEST(SpmmFewBlocks, EitherOwnerArrivesLast) {
  if (device_count() == 0) GTEST_SKIP() << "no GPU";
  const int64_t m = 384, k = 3000, tiles_k = (k + 63) / 64, units = 3 * tiles_k;
  for (SparseFormat format : kSparseFormats)
    for (int32_t lead_tiles : {1, int32_t(tiles_k) - 1})
      for (int64_t n : {3, 16, 32, 128}) {
        SCOPED_TRACE(std::string(sparse_format_name(format)) + " lead tiles " +
                     std::to_string(lead_tiles) + " n " + std::to_string(n));
        const std::vector<int32_t> ranges = {0, lead_tiles, int32_t(tiles_k) + 5, int32_t(units)};
        expect_matches_cublas(format, Shape{m, k, n, 0.6, DType::kFloat16}, 0, ranges);
      }
}

// A plan of four times the blocks the GPU holds at once, two tiles each, so
// that each of the two tile rows has hundreds of owners, most of them not
// resident together: a row's sum must not depend on its owners running at
// the same time (stream_k.cuh: reduce_row).
TEST(SpmmFewBlocks, PlanLargerThanTheGpuHolds) {
  if (device_count() == 0) GTEST_SKIP() << "no GPU";
  const int blocks = 4 * spmm_plan_blocks();
  for (SparseFormat format : kSparseFormats)
    for (int64_t n : {16, 128}) {
      SCOPED_TRACE(std::string(sparse_format_name(format)) + " n " + std::to_string(n));
      expect_matches_cublas(format, Shape{256, 64 * int64_t(blocks), n, 0.9, DType::kFloat16}, blocks);
    }
}

// One tile row: a tile for each block the GPU holds at once, then 256 tiles for
// one more block, which starts only when another block has left and then
// streams its share alone, long after the other owners are done.
TEST(SpmmFewBlocks, AnOwnerThatStartsLateAndEndsLast) {
  if (device_count() == 0) GTEST_SKIP() << "no GPU";
  const int resident = spmm_plan_blocks(), slow_tiles = 256;
  std::vector<int32_t> ranges;
  for (int32_t b = 0; b <= resident; ++b) ranges.push_back(b);
  ranges.push_back(resident + slow_tiles);
  for (SparseFormat format : kSparseFormats)
    for (int64_t n : {16, 128}) {
      SCOPED_TRACE(std::string(sparse_format_name(format)) + " n " + std::to_string(n));
      expect_matches_cublas(format, Shape{128, 64 * int64_t(resident + slow_tiles), n, 0.5, DType::kFloat16}, 0,
                            ranges);
    }
}

// ReLU in the epilogue (OPT's fc1), over the paths that store Y: one block per
// row and shared rows summed through the partials, mma.sync and wgmma widths.
TEST(SpmmRelu, MatchesCublasWithTheReluEpilogue) {
  if (device_count() == 0) GTEST_SKIP() << "no GPU";
  for (SparseFormat format : kSparseFormats)
    for (const Shape& shape : {Shape{1000, 3000, 1, 0.5, DType::kFloat16}, Shape{384, 2000, 16, 0.8, DType::kBFloat16},
                               Shape{1000, 3000, 100, 0.6, DType::kFloat16}}) {
      SCOPED_TRACE(std::string(sparse_format_name(format)) + " n " + std::to_string(std::get<2>(shape)));
      expect_matches_cublas(format, shape, spmm_plan_blocks(), {}, true);
      expect_matches_cublas(format, shape, 3, {}, true);
    }
}

INSTANTIATE_TEST_SUITE_P(
    Grid, SpmmVsCublas,
    ::testing::Combine(
        ::testing::ValuesIn(kSparseFormats),
        ::testing::Values(Shape{64, 172, 1, 0.5, DType::kFloat16}, Shape{1000, 3000, 7, 0.7, DType::kBFloat16},
                          Shape{4097, 4095, 17, 0.9, DType::kFloat16}, Shape{512, 1024, 64, 0.0, DType::kBFloat16},
                          Shape{384, 256, 100, 0.99, DType::kFloat16}, Shape{256, 512, 200, 0.5, DType::kFloat16},
                          Shape{2048, 2048, 16, 0.8, DType::kBFloat16}, Shape{1000, 3000, 3, 0.3, DType::kFloat16},
                          Shape{640, 1000, 31, kUneven, DType::kBFloat16}, Shape{300, 520, 2, 0.5, DType::kBFloat16},
                          Shape{1000, 3000, 128, 0.5, DType::kFloat16}, Shape{129, 77, 8, 0.7, DType::kFloat16},
                          Shape{1000, 3000, 256, 0.9, DType::kBFloat16}, Shape{640, 1000, 130, kUneven, DType::kFloat16})),
    case_name);

// A matrix without nonzeros still writes Y = bias (every tile empty).
TEST(SpmmEmptyWeight, WritesTheBias) {
  if (device_count() == 0) GTEST_SKIP() << "no GPU";
  for (SparseFormat format : kSparseFormats)
    for (int64_t n : {5, 128}) {
      const int64_t m = 300, k = 200;
      std::vector<uint16_t> w(m * k, 0), x(n * k, to_bits(1.0f, DType::kFloat16)), bias(m);
      for (int64_t i = 0; i < m; ++i) bias[i] = to_bits(float(i % 7) - 3.0f, DType::kFloat16);
      const auto [tile_offsets, words] = encode(format, w, m, k, DType::kFloat16);
      const int blocks = spmm_plan_blocks();
      const std::vector<StreamKBlock> plan = spmm_plan(tile_offsets.data(), m, k, blocks);
      DeviceBuffer<uint32_t> d_words(std::vector<uint32_t>(4, 0)), d_offsets(tile_offsets);
      DeviceBuffer<StreamKBlock> d_plan(plan);
      DeviceBuffer<uint16_t> d_x(x), d_bias(bias), d_y(n * m);
      const size_t ws_bytes = spmm_workspace_bytes(m, n, blocks);
      DeviceBuffer<char> ws(ws_bytes);
      SPARSELLM_CHECK_CUDA(cudaMemset(ws.ptr, 0, ws_bytes));
      SPARSELLM_CHECK_CUDA(cudaMemset(d_y.ptr, 0xFF, n * m * 2));
      const SpmmParams p = spmm_call(d_x.ptr, d_bias.ptr, d_y.ptr, n,
                                     {d_words.ptr, d_offsets.ptr, m, k, DType::kFloat16, format}, d_plan.ptr, blocks,
                                     ws.ptr, ws_bytes);
      spmm(p, nullptr);
      SPARSELLM_CHECK_CUDA(cudaDeviceSynchronize());
      EXPECT_EQ(d_y.download(n * m), [&] {
        std::vector<uint16_t> want(n * m);
        for (int64_t i = 0; i < n * m; ++i) want[i] = bias[i % m];
        return want;
      }());
    }
}

// A split 2:4 weight expanded to dense gives back the matrix it encodes, bit
// for bit (zeros as +0): empty, split and dense tiles, ragged edges.
TEST(Split24ToDense, GivesBackTheMatrix) {
  if (device_count() == 0) GTEST_SKIP() << "no GPU";
  for (auto [m, k, sparsity] : {std::tuple<int64_t, int64_t, double>{300, 200, 0.7}, {1000, 3000, 0.3},
                                {129, 65, 0.99}, {256, 512, 0.0}, {640, 1000, kUneven}}) {
    std::mt19937 rng(uint32_t(m + k));
    std::uniform_real_distribution<double> u(0.0, 1.0);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<uint16_t> w(m * k);
    for (int64_t i = 0; i < m * k; ++i) {
      const double s = sparsity != kUneven ? sparsity : (i / k < m / 2 ? 0.0 : 1.0);
      w[i] = u(rng) < s ? (rng() & 1 ? 0x8000 : 0) : to_bits(normal(rng), DType::kBFloat16);
      if ((w[i] & 0x7FFF) == 0) w[i] = rng() & 1 ? 0x8000 : 0;  // ±0 is zero
    }
    const auto [tile_offsets, words] = encode(SparseFormat::kSplit24, w, m, k, DType::kBFloat16);
    DeviceBuffer<uint32_t> d_words(words.empty() ? std::vector<uint32_t>(4, 0) : words), d_offsets(tile_offsets);
    DeviceBuffer<uint16_t> d_dense(m * k);
    SPARSELLM_CHECK_CUDA(cudaMemset(d_dense.ptr, 0xFF, m * k * 2));  // poison
    spmm_split24_to_dense({d_words.ptr, d_offsets.ptr, m, k, DType::kBFloat16, SparseFormat::kSplit24}, d_dense.ptr,
                          nullptr);
    SPARSELLM_CHECK_CUDA(cudaDeviceSynchronize());
    for (auto& v : w)
      if ((v & 0x7FFF) == 0) v = 0;
    EXPECT_TRUE(d_dense.download(m * k) == w) << m << "x" << k;
  }
  const SparseMatrixView bitmap{reinterpret_cast<const uint32_t*>(16), reinterpret_cast<const uint32_t*>(16), 128, 64,
                                DType::kFloat16, SparseFormat::kBitmap};
  EXPECT_THROW(spmm_split24_to_dense(bitmap, reinterpret_cast<void*>(16), nullptr), InvalidArgument);
}

// An RMSNorm folded between two products (SpmmNormFold), against the unfolded
// math in double on the same masked weights:
//   h1 = h0 + A · W1ᵀ + b1;  Y = (h1 / rms(h1) ⊙ γ) · W2ᵀ + b2,   rms(h1)[n] = sqrt(mean(h1[n]²) + eps)
// The out part updates h in place and writes normed = h1 ⊙ γ and the sums of
// squares; the in part scales by 1 / rms. Widths with a ragged last tile row,
// decode widths 1 … 16, the plan's blocks and 3 (rows shared by blocks), twice
// each (the same bits: the sums are per tile row, no atomics).
TEST(SpmmNormFold, MatchesTheNormBetweenTwoProducts) {
  if (device_count() == 0) GTEST_SKIP() << "no GPU";
  const float eps = 1e-5f;
  for (SparseFormat format : kSparseFormats)
    for (auto [k1, width, m2, n, dtype] :
         {std::tuple<int64_t, int64_t, int64_t, int64_t, DType>{500, 300, 200, 5, DType::kFloat16},
          {1000, 1024, 384, 16, DType::kBFloat16}, {1000, 1024, 384, 1, DType::kFloat16},
          {256, 640, 1000, 9, DType::kFloat16}})
      for (int blocks : {spmm_plan_blocks(), 3}) {
        SCOPED_TRACE(std::string(sparse_format_name(format)) + " width " + std::to_string(width) + " n " +
                     std::to_string(n) + " blocks " + std::to_string(blocks));
        std::mt19937 rng(uint32_t(k1 * 31 + width * 7 + n + blocks));
        std::normal_distribution<float> normal(0.0f, 1.0f);
        std::uniform_real_distribution<double> u(0.0, 1.0);
        auto draw = [&](int64_t count, float scale, float offset, double sparsity) {
          std::vector<uint16_t> v(count);
          for (auto& e : v) e = u(rng) < sparsity ? 0 : to_bits(offset + scale * normal(rng), dtype);
          return v;
        };
        const std::vector<uint16_t> w1 = draw(width * k1, 0.05f, 0.0f, 0.6), w2 = draw(m2 * width, 0.05f, 0.0f, 0.5);
        const std::vector<uint16_t> a = draw(n * k1, 1.0f, 0.0f, 0.0), h0 = draw(n * width, 1.0f, 0.0f, 0.0);
        const std::vector<uint16_t> b1 = draw(width, 0.5f, 0.0f, 0.0), b2 = draw(m2, 0.5f, 0.0f, 0.0);
        const std::vector<uint16_t> gamma = draw(width, 0.1f, 1.0f, 0.0);

        // Reference in double.
        auto f = [&](const std::vector<uint16_t>& v, int64_t i) { return double(from_bits(v[i], dtype)); };
        std::vector<double> h1(n * width), normed_ref(n * width), y_ref(n * m2);
        for (int64_t r = 0; r < n; ++r) {
          double sumsq = 0;
          for (int64_t j = 0; j < width; ++j) {
            double acc = f(h0, r * width + j) + f(b1, j);
            for (int64_t c = 0; c < k1; ++c) acc += f(a, r * k1 + c) * f(w1, j * k1 + c);
            h1[r * width + j] = acc;
            sumsq += acc * acc;
          }
          const double inv_rms = 1.0 / std::sqrt(sumsq / double(width) + eps);
          for (int64_t j = 0; j < width; ++j) normed_ref[r * width + j] = h1[r * width + j] * f(gamma, j);
          for (int64_t i = 0; i < m2; ++i) {
            double acc = 0;
            for (int64_t j = 0; j < width; ++j) acc += normed_ref[r * width + j] * f(w2, i * width + j);
            y_ref[r * m2 + i] = acc * inv_rms + f(b2, i);
          }
        }

        const auto [offsets1, words1] = encode(format, w1, width, k1, dtype);
        const auto [offsets2, words2] = encode(format, w2, m2, width, dtype);
        const std::vector<StreamKBlock> plan1 = spmm_plan(offsets1.data(), width, k1, blocks);
        const std::vector<StreamKBlock> plan2 = spmm_plan(offsets2.data(), m2, width, blocks);
        DeviceBuffer<uint32_t> d_words1(words1), d_offsets1(offsets1), d_words2(words2), d_offsets2(offsets2);
        DeviceBuffer<StreamKBlock> d_plan1(plan1), d_plan2(plan2);
        DeviceBuffer<uint16_t> d_a(a), d_h(n * width), d_b1(b1), d_b2(b2), d_gamma(gamma), d_normed(n * width),
            d_y(n * m2);
        const int64_t tile_rows = (width + 127) / 128;
        DeviceBuffer<float> d_sumsq(tile_rows * n);
        const size_t ws_bytes = std::max(spmm_workspace_bytes(width, n, int(plan1.size())),
                                         spmm_workspace_bytes(m2, n, int(plan2.size())));
        DeviceBuffer<char> ws(ws_bytes);
        SPARSELLM_CHECK_CUDA(cudaMemset(ws.ptr, 0, ws_bytes));

        SpmmParams out = spmm_call(d_a.ptr, d_b1.ptr, d_h.ptr, n,
                                   {d_words1.ptr, d_offsets1.ptr, width, k1, dtype, format}, d_plan1.ptr,
                                   int(plan1.size()), ws.ptr, ws_bytes);
        out.norm.out = {d_gamma.ptr, d_normed.ptr, d_sumsq.ptr};
        SpmmParams in = spmm_call(d_normed.ptr, d_b2.ptr, d_y.ptr, n,
                                  {d_words2.ptr, d_offsets2.ptr, m2, width, dtype, format}, d_plan2.ptr,
                                  int(plan2.size()), ws.ptr, ws_bytes);
        in.norm.in = {d_sumsq.ptr, eps};

        std::vector<uint16_t> first_y;
        for (int rep = 0; rep < 2; ++rep) {
          SPARSELLM_CHECK_CUDA(cudaMemcpy(d_h.ptr, h0.data(), h0.size() * 2, cudaMemcpyHostToDevice));
          SPARSELLM_CHECK_CUDA(cudaMemset(d_normed.ptr, 0xFF, n * width * 2));  // poison: NaN in both dtypes
          SPARSELLM_CHECK_CUDA(cudaMemset(d_y.ptr, 0xFF, n * m2 * 2));
          SPARSELLM_CHECK_CUDA(cudaMemset(d_sumsq.ptr, 0xFF, tile_rows * n * 4));
          spmm(out, nullptr);
          spmm(in, nullptr);
          SPARSELLM_CHECK_CUDA(cudaDeviceSynchronize());
          const double tol = dtype == DType::kFloat16 ? 3e-3 : 2e-2;  // three roundings: h, normed, Y
          auto expect_close = [&](const std::vector<uint16_t>& got, const std::vector<double>& want, const char* what) {
            double num = 0, den = 0;
            for (size_t i = 0; i < want.size(); ++i) {
              const double g = from_bits(got[i], dtype);
              ASSERT_TRUE(std::isfinite(g)) << what << " element " << i << " not written";
              num += (g - want[i]) * (g - want[i]);
              den += want[i] * want[i];
            }
            EXPECT_LT(std::sqrt(num / den), tol) << what;
          };
          expect_close(d_h.download(n * width), h1, "h (the residual, updated in place)");
          expect_close(d_normed.download(n * width), normed_ref, "normed = h ⊙ γ");
          const std::vector<uint16_t> y = d_y.download(n * m2);
          expect_close(y, y_ref, "Y of the normed input");
          if (rep == 0) first_y = y;
          else EXPECT_TRUE(y == first_y) << "two calls gave different results";
          const size_t kept = spmm_workspace_scratch_offset();
          const std::vector<char> head = ws.download(kept);
          EXPECT_EQ(size_t(std::count(head.begin(), head.end(), char(0))), kept) << "the workspace was not left zero";
        }
      }
}

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
  p.weight.format = SparseFormat::kBitmap;
  EXPECT_THROW(spmm(p, nullptr), InvalidArgument);
  p.weight.format = SparseFormat::kSplit24;
  EXPECT_THROW(spmm(p, nullptr), InvalidArgument);
  p.weight.format = SparseFormat::kTiledCsl;
  EXPECT_THROW(spmm_bitmap(p, nullptr), InvalidArgument);  // not a bitmap weight
  EXPECT_THROW(spmm_split24(p, nullptr), InvalidArgument);  // not a split 2:4 weight
}

}  // namespace
}  // namespace sparsellm
