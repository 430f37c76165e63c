// Random weights drawn on the GPU (kernels/random_weights, runtime/weights.h):
// the bitmap form is a valid bitmap matrix (validate_bitmap) whose decoding
// (bitmap_reference.h) equals the dense form of the same draw bit for bit, at
// odd shapes and at densities 0 … 1; the kept fraction and the values'
// mean and spread match what was asked; the draw is deterministic and differs
// between tensors. Skips without a GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "bitmap_reference.h"
#include "common/check.h"
#include "runtime/weights.h"
#include "sparsellm/bitmap.h"
#include "sparsellm/device.h"
#include "sparsellm/error.h"

namespace sparsellm {
namespace {

float to_float(uint16_t bits, DType dtype) {
  if (dtype == DType::kBFloat16) {
    const uint32_t word = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &word, sizeof f);
    return f;
  }
  __half_raw raw;
  raw.x = bits;
  return __half2float(__half(raw));
}

template <typename T>
std::vector<T> download(const void* device, size_t count) {
  std::vector<T> host(count);
  if (count) SPARSELLM_CHECK_CUDA(cudaMemcpy(host.data(), device, count * sizeof(T), cudaMemcpyDeviceToHost));
  return host;
}

std::vector<uint16_t> draw_dense(const RandomWeightParams& p) {
  DeviceBuffer buffer(size_t(p.rows * p.cols) * 2, "dense");
  random_dense(buffer.data(), p, nullptr);
  return download<uint16_t>(buffer.data(), size_t(p.rows * p.cols));
}

BitmapHost draw_bitmap_host(const RandomWeightParams& p) {
  SparseUpload drawn = draw_bitmap(p, "bitmap", nullptr);
  BitmapHost out;
  out.m = p.rows;
  out.k = p.cols;
  out.dtype = p.dtype;
  out.tile_offsets = download<uint32_t>(drawn.tile_offsets.data(), drawn.host_offsets.size());
  EXPECT_EQ(out.tile_offsets, drawn.host_offsets);
  out.data = download<uint32_t>(drawn.data.data(), out.tile_offsets.back());
  return out;
}

struct DrawCase {
  int64_t rows, cols;
  double density;
  DType dtype;
};

class RandomWeights : public ::testing::TestWithParam<DrawCase> {};

TEST_P(RandomWeights, BitmapDecodesToTheDenseDraw) {
  if (device_count() == 0) GTEST_SKIP() << "no GPU";
  const DrawCase c = GetParam();
  RandomWeightParams p;
  p.rows = c.rows;
  p.cols = c.cols;
  p.seed = 0x1234'5678'9abcULL;
  p.tensor = 77;
  p.density = c.density;
  p.dtype = c.dtype;
  const std::vector<uint16_t> dense = draw_dense(p);
  const BitmapHost bm = draw_bitmap_host(p);
  ASSERT_NO_THROW(validate_bitmap(bm.tile_offsets.data(), bm.data.data(), int64_t(bm.data.size()), p.rows, p.cols));
  EXPECT_EQ(decode_bitmap(bm), dense);

  // The kept fraction within 6 standard deviations of the density; values of
  // mean 0 and standard deviation std (5 % for 10^4 or more kept values).
  const double n = double(p.rows * p.cols);
  int64_t kept = 0;
  double sum = 0.0, squares = 0.0;
  for (uint16_t bits : dense) {
    if ((bits & 0x7FFF) == 0) continue;
    ++kept;
    const double v = to_float(bits, p.dtype);
    sum += v;
    squares += v * v;
  }
  EXPECT_LE(std::abs(kept / n - c.density), 6.0 * std::sqrt(c.density * (1 - c.density) / n) + 1e-12);
  if (kept >= 10000) {
    const double mean = sum / kept, sd = std::sqrt(squares / kept - mean * mean);
    EXPECT_LE(std::abs(mean), 6.0 * p.std / std::sqrt(double(kept)));
    EXPECT_NEAR(sd, p.std, 0.05 * p.std);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, RandomWeights,
    ::testing::Values(DrawCase{300, 200, 0.5, DType::kFloat16}, DrawCase{128, 64, 1.0, DType::kFloat16},
                      DrawCase{129, 65, 0.2, DType::kBFloat16}, DrawCase{1000, 1000, 0.2, DType::kFloat16},
                      DrawCase{513, 4097, 0.35, DType::kBFloat16}, DrawCase{64, 64, 0.0, DType::kFloat16},
                      DrawCase{17, 3000, 0.02, DType::kFloat16}),
    [](const auto& info) {
      const DrawCase& c = info.param;
      return "m" + std::to_string(c.rows) + "_k" + std::to_string(c.cols) + "_d" +
             std::to_string(int(c.density * 100)) + (c.dtype == DType::kFloat16 ? "_fp16" : "_bf16");
    });

TEST(RandomWeights, DeterministicPerTensorAndOffset) {
  if (device_count() == 0) GTEST_SKIP() << "no GPU";
  RandomWeightParams p;
  p.rows = 1;
  p.cols = 65536;
  p.seed = 7;
  p.tensor = 1;
  const std::vector<uint16_t> a = draw_dense(p), again = draw_dense(p);
  EXPECT_EQ(a, again);
  p.tensor = 2;
  const std::vector<uint16_t> b = draw_dense(p);
  int64_t same = 0;
  for (size_t i = 0; i < a.size(); ++i) same += a[i] == b[i];
  EXPECT_LT(same, int64_t(a.size() / 50)) << "two tensors drew the same values";
  p.offset = 1.0f;  // a norm weight: around 1
  double sum = 0.0;
  for (uint16_t bits : draw_dense(p)) sum += to_float(bits, p.dtype);
  EXPECT_NEAR(sum / double(p.cols), 1.0, 0.001);
  p.density = 1.5;
  EXPECT_THROW(draw_dense(p), InvalidArgument);
}

}  // namespace
}  // namespace sparsellm
