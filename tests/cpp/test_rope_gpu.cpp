// The rotary embedding kernel (kernels/rope/rope.h) against a CPU reference,
// and the host table of inverse frequencies against an independent double
// implementation of transformers' default / linear / llama3 rules.
//
// The reference forms the angle as transformers does (fp32 inv_freq times
// the fp32 position, rounded to fp32), then rotates in double. Rows are
// wider than the rotated heads (padding columns, poisoned with NaN) so an
// out-of-bounds write or a wrong stride shows; positions are random in
// [0, 6000) so a fast-math sine (inaccurate past a few radians) would fail.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "common/check.h"
#include "kernels/attention/kv_cache.h"
#include "kernels/rope/rope.h"
#include "sparsellm/device.h"
#include "sparsellm/error.h"

namespace sparsellm {
namespace {

#define SKIP_WITHOUT_GPU() \
  if (device_count() == 0) GTEST_SKIP() << "no GPU"

template <typename T>
struct DeviceArray {
  T* ptr = nullptr;
  size_t count = 0;
  explicit DeviceArray(const std::vector<T>& host) : count(host.size()) {
    SPARSELLM_CHECK_CUDA(cudaMalloc(&ptr, std::max<size_t>(count, 1) * sizeof(T)));
    SPARSELLM_CHECK_CUDA(cudaMemcpy(ptr, host.data(), count * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~DeviceArray() { cudaFree(ptr); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  std::vector<T> download() const {
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
constexpr uint16_t kNaNBits = 0xFFFF;  // NaN in fp16 and bf16

// --- host: inverse frequencies ------------------------------------------------

// transformers' rules, written independently in double.
std::vector<double> reference_inv_freq(const RopeConfig& c, int head_dim) {
  std::vector<double> inv(size_t(head_dim / 2));
  for (int i = 0; i < head_dim / 2; ++i) inv[size_t(i)] = std::pow(double(c.theta), -2.0 * i / head_dim);
  if (c.scaling == RopeConfig::Scaling::kLinear)
    for (double& f : inv) f /= c.factor;
  if (c.scaling == RopeConfig::Scaling::kLlama3) {
    const double pi = std::acos(-1.0), old_len = c.original_max_positions;
    for (double& f : inv) {
      const double wavelen = 2 * pi / f;
      if (wavelen < old_len / c.high_freq_factor) continue;                 // high frequency: kept
      if (wavelen > old_len / c.low_freq_factor) { f /= c.factor; continue; }  // low frequency: scaled
      const double smooth = (old_len / wavelen - c.low_freq_factor) / (c.high_freq_factor - c.low_freq_factor);
      f = (1 - smooth) * f / c.factor + smooth * f;
    }
  }
  return inv;
}

TEST(RopeInverseFrequencies, MatchTransformersRules) {
  struct Case {
    const char* name;
    RopeConfig cfg;
    int head_dim;
  };
  RopeConfig plain;
  RopeConfig llama2 = plain;
  RopeConfig linear = plain;
  linear.scaling = RopeConfig::Scaling::kLinear;
  linear.factor = 4.f;
  RopeConfig llama31;  // Llama-3.1-8B
  llama31.theta = 500000.f;
  llama31.scaling = RopeConfig::Scaling::kLlama3;
  llama31.factor = 8.f;
  llama31.low_freq_factor = 1.f;
  llama31.high_freq_factor = 4.f;
  llama31.original_max_positions = 8192;
  RopeConfig small = llama31;  // a short original context puts many frequencies in each band
  small.theta = 10000.f;
  small.original_max_positions = 64;
  small.factor = 2.f;
  for (const Case& c : {Case{"default-8", plain, 8}, Case{"default-128", llama2, 128}, Case{"linear", linear, 64},
                        Case{"llama3.1", llama31, 128}, Case{"llama3-small", small, 32}}) {
    SCOPED_TRACE(c.name);
    const std::vector<float> got = rope_inverse_frequencies(c.cfg, c.head_dim);
    const std::vector<double> want = reference_inv_freq(c.cfg, c.head_dim);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 2e-6 * want[i]) << "i = " << i;
    EXPECT_FLOAT_EQ(got[0], c.cfg.scaling == RopeConfig::Scaling::kLinear ? 1.f / c.cfg.factor : 1.f);
  }
  // Llama 3: the lowest frequency (longest wavelength) is divided by factor, the highest kept.
  const std::vector<float> f = rope_inverse_frequencies(small, 32);
  EXPECT_NEAR(f.back(), std::pow(10000.0, -30.0 / 32) / 2, 1e-9);
}

TEST(RopeInverseFrequencies, RejectsBadSettings) {
  RopeConfig c;
  EXPECT_THROW(rope_inverse_frequencies(c, 7), InvalidArgument);
  c.theta = 0.f;
  EXPECT_THROW(rope_inverse_frequencies(c, 8), InvalidArgument);
  RopeConfig l3;
  l3.scaling = RopeConfig::Scaling::kLlama3;
  l3.low_freq_factor = 4.f;
  l3.high_freq_factor = 1.f;
  EXPECT_THROW(rope_inverse_frequencies(l3, 8), InvalidArgument);
}

// --- device: the rotation ------------------------------------------------------

// q_heads, k_heads, head_dim, tokens, dtype
using RopeCase = std::tuple<int, int, int, int, DType>;

// The rotation of q [tokens, q_stride] and k [tokens, k_stride] (k may be null) by the given tables.
RopeParams rotation(const RopeCase& c, void* q, int64_t q_stride, void* k, int64_t k_stride, const int32_t* position,
                    const float* inv_freq) {
  RopeParams p;
  std::tie(p.q_heads, p.k_heads, p.head_dim, p.tokens, p.dtype) = c;
  p.q = q;
  p.k = k;
  p.q_stride = q_stride;
  p.k_stride = k_stride;
  p.position = position;
  p.inv_freq = inv_freq;
  return p;
}

class RopeKernel : public ::testing::TestWithParam<RopeCase> {};

TEST_P(RopeKernel, MatchesReference) {
  SKIP_WITHOUT_GPU();
  const auto [q_heads, k_heads, head_dim, tokens, dtype] = GetParam();
  const int half = head_dim / 2;
  const int64_t q_stride = int64_t(q_heads) * head_dim + 8, k_stride = int64_t(k_heads) * head_dim + 3;
  std::mt19937 rng(uint32_t(q_heads * 1000 + k_heads * 100 + head_dim + tokens));
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_int_distribution<int32_t> pos_dist(0, 5999);

  RopeConfig cfg;
  cfg.theta = 10000.f;
  if (head_dim == 128) {  // exercise the llama3 table through the kernel as well
    cfg.theta = 500000.f;
    cfg.scaling = RopeConfig::Scaling::kLlama3;
    cfg.factor = 8.f;
    cfg.original_max_positions = 8192;
  }
  const std::vector<float> inv = rope_inverse_frequencies(cfg, head_dim);

  std::vector<int32_t> pos(static_cast<size_t>(tokens));
  for (int t = 0; t < tokens; ++t) pos[size_t(t)] = t == 0 ? 0 : (t == 1 ? 1 : pos_dist(rng));
  auto make = [&](int64_t rows, int64_t stride, int heads) {
    std::vector<uint16_t> bits(size_t(rows * stride), kNaNBits);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t e = 0; e < int64_t(heads) * head_dim; ++e) bits[size_t(r * stride + e)] = to_bits(normal(rng), dtype);
    return bits;
  };
  const std::vector<uint16_t> q0 = make(tokens, q_stride, q_heads), k0 = make(tokens, k_stride, k_heads);
  DeviceArray<uint16_t> q(q0), k(k0);
  DeviceArray<int32_t> d_pos(pos);
  DeviceArray<float> d_inv(inv);

  rope(rotation(GetParam(), q.ptr, q_stride, k_heads > 0 ? k.ptr : nullptr, k_stride, d_pos.ptr, d_inv.ptr), nullptr);
  SPARSELLM_CHECK_CUDA(cudaDeviceSynchronize());

  const float tol = dtype == DType::kFloat16 ? 2e-3f : 1.6e-2f;
  auto check = [&](const std::vector<uint16_t>& before, const std::vector<uint16_t>& after, int64_t stride,
                   int heads, const char* which) {
    int bad = 0;
    for (int t = 0; t < tokens; ++t) {
      for (int64_t e = int64_t(heads) * head_dim; e < stride; ++e)  // padding untouched
        if (after[size_t(t * stride + e)] != kNaNBits && bad++ < 5)
          ADD_FAILURE() << which << ": padding written at token " << t << ", column " << e;
      for (int h = 0; h < heads; ++h)
        for (int i = 0; i < half; ++i) {
          const size_t i0 = size_t(t * stride + int64_t(h) * head_dim + i), i1 = i0 + size_t(half);
          const float angle = float(pos[size_t(t)]) * inv[size_t(i)];  // fp32, as transformers forms it
          const double c = std::cos(double(angle)), s = std::sin(double(angle));
          const double x0 = from_bits(before[i0], dtype), x1 = from_bits(before[i1], dtype);
          const double want0 = x0 * c - x1 * s, want1 = x1 * c + x0 * s;
          const float got0 = from_bits(after[i0], dtype), got1 = from_bits(after[i1], dtype);
          if (!(std::fabs(got0 - want0) <= tol * (1 + std::fabs(want0))) ||
              !(std::fabs(got1 - want1) <= tol * (1 + std::fabs(want1)))) {
            if (bad++ < 5)
              ADD_FAILURE() << which << ": token " << t << " (position " << pos[size_t(t)] << "), head " << h
                            << ", pair " << i << ": got (" << got0 << ", " << got1 << "), want (" << want0 << ", "
                            << want1 << ")";
          }
        }
    }
    EXPECT_EQ(bad, 0) << which;
  };
  check(q0, q.download(), q_stride, q_heads, "q");
  if (k_heads > 0) check(k0, k.download(), k_stride, k_heads, "k");
}

// The cache append in the rope kernel against rope, then kv_cache_write: the
// same q and k rows and the same caches, bit for bit. Caches start poisoned
// (NaN) so that a stray or missing write shows; the last token's slot is out
// of range, which both must skip, and the values written are counted.
TEST_P(RopeKernel, AppendMatchesKvCacheWrite) {
  SKIP_WITHOUT_GPU();
  const auto [q_heads, k_heads, head_dim, tokens, dtype] = GetParam();
  if (k_heads == 0) GTEST_SKIP() << "no keys to append";
  const int64_t q_stride = int64_t(q_heads) * head_dim + 8, kv_stride = int64_t(k_heads) * head_dim + 8;
  const int32_t slots = 3, max_seq = 6007;
  std::mt19937 rng(uint32_t(7 + q_heads * 1000 + k_heads * 100 + head_dim + tokens));
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_int_distribution<int32_t> pos_dist(0, 5999), slot_dist(0, slots - 1);
  std::vector<int32_t> pos(static_cast<size_t>(tokens)), slot(static_cast<size_t>(tokens));
  // Distinct positions (4099 is prime to 6000), so no two tokens share a cache row.
  const int32_t base = pos_dist(rng);
  for (int t = 0; t < tokens; ++t) {
    pos[size_t(t)] = int32_t((int64_t(t) * 4099 + base) % 6000);
    slot[size_t(t)] = slot_dist(rng);
  }
  const int appended = tokens > 1 ? tokens - 1 : tokens;
  if (tokens > 1) slot[size_t(tokens - 1)] = slots;  // outside the cache: not appended
  auto random_rows = [&](int64_t stride) {
    std::vector<uint16_t> bits(size_t(tokens * stride));
    for (uint16_t& b : bits) b = to_bits(normal(rng), dtype);
    return bits;
  };
  const std::vector<uint16_t> q0 = random_rows(q_stride), k0 = random_rows(kv_stride), v0 = random_rows(kv_stride);
  const std::vector<uint16_t> poison(size_t(slots) * k_heads * max_seq * head_dim, kNaNBits);
  RopeConfig cfg;
  const std::vector<float> inv = rope_inverse_frequencies(cfg, head_dim);
  DeviceArray<int32_t> d_pos(pos), d_slot(slot);
  DeviceArray<float> d_inv(inv);
  DeviceArray<uint16_t> v(v0);

  struct Result {
    std::vector<uint16_t> q, k, cache_k, cache_v;
  };
  auto run = [&](bool fused) {
    DeviceArray<uint16_t> q(q0), k(k0), cache_k(poison), cache_v(poison);
    const KvCacheView cache{cache_k.ptr, cache_v.ptr, slots, k_heads, max_seq, head_dim};
    RopeParams p = rotation(GetParam(), q.ptr, q_stride, k.ptr, kv_stride, d_pos.ptr, d_inv.ptr);
    if (fused) {
      p.cache = cache;
      p.v = v.ptr;
      p.v_stride = kv_stride;
      p.slot = d_slot.ptr;
    }
    rope(p, nullptr);
    if (!fused) {
      KvCacheWriteParams w;
      w.k = k.ptr;
      w.v = v.ptr;
      w.k_stride = w.v_stride = kv_stride;
      w.cache = cache;
      w.place = TokenPlacement{d_slot.ptr, d_pos.ptr};
      w.tokens = tokens;
      w.dtype = dtype;
      kv_cache_write(w, nullptr);
    }
    SPARSELLM_CHECK_CUDA(cudaDeviceSynchronize());
    return Result{q.download(), k.download(), cache_k.download(), cache_v.download()};
  };
  const Result fused = run(true), separate = run(false);
  EXPECT_TRUE(fused.q == separate.q) << "q";
  EXPECT_TRUE(fused.k == separate.k) << "k";
  EXPECT_TRUE(fused.cache_k == separate.cache_k) << "cache k";
  EXPECT_TRUE(fused.cache_v == separate.cache_v) << "cache v";
  const size_t written = size_t(std::count_if(fused.cache_v.begin(), fused.cache_v.end(),
                                               [](uint16_t b) { return b != kNaNBits; }));
  EXPECT_EQ(written, size_t(appended) * k_heads * head_dim) << "values appended";
}

std::string rope_case_name(const ::testing::TestParamInfo<RopeCase>& info) {
  const auto [qh, kh, d, t, dt] = info.param;
  return "q" + std::to_string(qh) + "_k" + std::to_string(kh) + "_d" + std::to_string(d) + "_t" + std::to_string(t) +
         (dt == DType::kFloat16 ? "_fp16" : "_bf16");
}

INSTANTIATE_TEST_SUITE_P(Shapes, RopeKernel,
                         ::testing::Values(RopeCase{8, 4, 8, 37, DType::kFloat16},     // stories260K: GQA, d = 8
                                           RopeCase{8, 4, 8, 5, DType::kBFloat16},
                                           RopeCase{32, 32, 128, 3, DType::kFloat16},  // Llama-2-7B, llama3 table
                                           RopeCase{8, 1, 128, 1, DType::kBFloat16},   // 70B / tp 8 decode
                                           RopeCase{5, 1, 40, 19, DType::kFloat16},    // odd: 5 heads, d = 40
                                           RopeCase{3, 0, 64, 7, DType::kFloat16},     // queries only
                                           RopeCase{16, 4, 64, 130, DType::kBFloat16}),
                         rope_case_name);

TEST(RopeValidation, RejectsBadArguments) {
  RopeParams p;
  p.head_dim = 7;
  p.tokens = 1;
  EXPECT_THROW(rope(p, nullptr), InvalidArgument);  // odd head_dim
  p.head_dim = 8;
  p.q_heads = 2;
  p.q_stride = 8;  // < 2 · 8
  int dummy = 0;
  p.q = &dummy;
  EXPECT_THROW(rope(p, nullptr), InvalidArgument);
  p.q_stride = 16;
  EXPECT_THROW(rope(p, nullptr), InvalidArgument);  // null position / inv_freq
  p.tokens = 0;
  EXPECT_NO_THROW(rope(p, nullptr));  // nothing to do
  // The cache append: a cache whose heads do not match, or no values.
  float inv = 1.f;
  int32_t position = 0;
  p.tokens = 1;
  p.position = &position;
  p.inv_freq = &inv;
  p.k = &dummy;
  p.k_heads = 1;
  p.k_stride = 8;
  p.cache.k = p.cache.v = &dummy;
  p.cache.slots = p.cache.max_seq = 1;
  p.cache.kv_heads = 2;
  p.cache.head_dim = 8;
  p.v = &dummy;
  p.v_stride = 8;
  p.slot = &position;
  EXPECT_THROW(rope(p, nullptr), InvalidArgument);  // kv_heads 2 ≠ k_heads 1
  p.cache.kv_heads = 1;
  p.v = nullptr;
  EXPECT_THROW(rope(p, nullptr), InvalidArgument);  // no values
}

}  // namespace
}  // namespace sparsellm
