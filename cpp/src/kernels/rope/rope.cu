// Rotary position embedding, rotate-half layout (rope.h).
//
// Grid (tokens, ⌈pairs / kThreads⌉, at most kMaxBlocksPerToken): a token's
// (q_heads + k_heads) · head_dim/2 rotation pairs are spread over its blocks,
// pair j is head j / half, index i = j % half, touching elements i and
// i + half of that head. Each element is read and written by exactly one
// thread, so the update is in place without synchronization. With the cache
// append, k_heads more "heads" follow: the value heads, whose pairs are copied,
// not rotated; a key pair is stored rotated in place and in the cache. The op
// is tiny next to the projections around it (2 · (q_heads + k_heads) · head_dim
// elements per token); it is written for clarity, scalar loads, no shared
// memory. At decode one block per token would walk its 4,096 pairs (Llama-2-7B)
// 32 at a time, each a dependent load, sincos and store: latency, not work.
#include "kernels/rope/rope.h"

#include <algorithm>
#include <cmath>

#include "common/check.h"
#include "kernels/device_math.cuh"
#include "kernels/launch.h"

namespace sparsellm {
namespace {

using namespace kernels;

constexpr int kThreads = 128;
constexpr int kMaxBlocksPerToken = 64;  // 8,192 pairs in one pass (Llama-2-70B has 4,608)

struct RopeArgs {
  void* q;                 // [tokens, q_heads · head_dim], row stride q_stride
  void* k;                 // [tokens, k_heads · head_dim], row stride k_stride
  const void* v;           // [tokens, k_heads · head_dim], row stride v_stride (append only)
  int64_t q_stride, k_stride, v_stride;
  int32_t q_heads, k_heads, half;  // half = head_dim / 2
  const int32_t* position; // [tokens]
  const float* inv_freq;   // [half]
  KvCacheView cache;       // cache.k null: no append
  const int32_t* slot;     // [tokens] (append only)
};

template <typename T>
__global__ void __launch_bounds__(kThreads) rope_kernel(RopeArgs a) {
  kernels::begin_chained_kernel();  // chained launch (kernels/launch.h)
  const int64_t t = blockIdx.x;
  const int32_t position = a.position[t];
  const float pos = float(position);
  const bool append = a.cache.k != nullptr;
  const int32_t slot = append ? a.slot[t] : 0;
  const bool in_cache = append && kv_cache_holds(slot, position, a.cache.slots, a.cache.max_seq);
  const int32_t pairs = (a.q_heads + (append ? 2 : 1) * a.k_heads) * a.half;
  for (int32_t j = blockIdx.y * blockDim.x + threadIdx.x; j < pairs; j += gridDim.y * blockDim.x) {
    const int32_t head = j / a.half, i = j % a.half;
    const int32_t kv_head = head - a.q_heads;  // ≥ k_heads: a value head
    // The cache row of (slot, kv head, position) for key or value head kv_head.
    auto cache_row = [&](void* base, int32_t g) {
      return static_cast<T*>(base) + kv_cache_row(slot, g, position, a.cache.kv_heads, a.cache.max_seq, 2 * a.half);
    };
    if (kv_head >= a.k_heads) {  // value pair: copied to the cache
      if (!in_cache) continue;
      const T* x = static_cast<const T*>(a.v) + t * a.v_stride + int64_t(kv_head - a.k_heads) * 2 * a.half;
      T* row = cache_row(a.cache.v, kv_head - a.k_heads);
      row[i] = x[i];
      row[i + a.half] = x[i + a.half];
      continue;
    }
    T* x = kv_head < 0 ? static_cast<T*>(a.q) + t * a.q_stride + int64_t(head) * 2 * a.half
                       : static_cast<T*>(a.k) + t * a.k_stride + int64_t(kv_head) * 2 * a.half;
    // fp32 angle as transformers forms it (inv_freq · position in fp32), then accurate sincos.
    const float angle = pos * a.inv_freq[i];
    float s, c;
    sincosf(angle, &s, &c);
    const float x0 = to_float(x[i]), x1 = to_float(x[i + a.half]);
    const T y0 = from_float<T>(x0 * c - x1 * s), y1 = from_float<T>(x1 * c + x0 * s);
    x[i] = y0;
    x[i + a.half] = y1;
    if (kv_head >= 0 && in_cache) {
      T* row = cache_row(a.cache.k, kv_head);
      row[i] = y0;
      row[i + a.half] = y1;
    }
  }
}

}  // namespace

std::vector<float> rope_inverse_frequencies(const RopeConfig& cfg, int32_t head_dim) {
  SPARSELLM_CHECK_ARG(head_dim >= 2 && head_dim % 2 == 0, "rope: head_dim must be even and ≥ 2, got ", head_dim);
  SPARSELLM_CHECK_ARG(std::isfinite(cfg.theta) && cfg.theta > 0.f, "rope: rope_theta must be positive, got ",
                      cfg.theta);
  const int32_t half = head_dim / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  // transformers: 1 / theta ** (arange(0, dim, 2).float() / dim), in fp32.
  for (int32_t i = 0; i < half; ++i) {
    const float exponent = float(2 * i) / float(head_dim);
    inv[size_t(i)] = 1.0f / std::pow(cfg.theta, exponent);
  }
  switch (cfg.scaling) {
    case RopeConfig::Scaling::kNone:
      break;
    case RopeConfig::Scaling::kLinear:
      SPARSELLM_CHECK_ARG(std::isfinite(cfg.factor) && cfg.factor > 0.f, "rope: linear scaling factor must be ",
                          "positive, got ", cfg.factor);
      for (float& f : inv) f /= cfg.factor;
      break;
    case RopeConfig::Scaling::kLlama3: {
      // transformers' _compute_llama3_parameters: long wavelengths divided by factor,
      // short ones kept, the band between interpolated smoothly.
      SPARSELLM_CHECK_ARG(std::isfinite(cfg.factor) && cfg.factor > 0.f && cfg.original_max_positions > 0 &&
                              cfg.low_freq_factor > 0.f && cfg.high_freq_factor > cfg.low_freq_factor,
                          "rope: llama3 scaling needs factor > 0, original_max_position_embeddings > 0 and ",
                          "high_freq_factor > low_freq_factor > 0; got factor ", cfg.factor, ", ",
                          cfg.original_max_positions, ", ", cfg.high_freq_factor, ", ", cfg.low_freq_factor);
      const float old_len = float(cfg.original_max_positions);
      const float low_wavelen = old_len / cfg.low_freq_factor;
      const float high_wavelen = old_len / cfg.high_freq_factor;
      const float pi = 3.14159265358979323846f;
      for (float& f : inv) {
        const float wavelen = 2.f * pi / f;
        float scaled = wavelen > low_wavelen ? f / cfg.factor : f;
        const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
        if (medium) {
          const float smooth = (old_len / wavelen - cfg.low_freq_factor) / (cfg.high_freq_factor - cfg.low_freq_factor);
          scaled = (1.f - smooth) * scaled / cfg.factor + smooth * scaled;
        }
        f = scaled;
      }
      break;
    }
  }
  return inv;
}

void rope(const RopeParams& p, cudaStream_t stream) {
  SPARSELLM_CHECK_ARG(p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16, "rope: unknown dtype");
  SPARSELLM_CHECK_ARG(p.tokens >= 0 && p.tokens <= INT32_MAX, "rope: tokens=", p.tokens, " out of range");
  SPARSELLM_CHECK_ARG(p.head_dim >= 2 && p.head_dim % 2 == 0 && p.head_dim <= 1024,
                      "rope: head_dim must be even in [2, 1024], got ", p.head_dim);
  SPARSELLM_CHECK_ARG(p.q_heads >= 0 && p.k_heads >= 0 && int64_t(p.q_heads) + p.k_heads <= (1 << 20),
                      "rope: q_heads=", p.q_heads, ", k_heads=", p.k_heads, " out of range");
  SPARSELLM_CHECK_ARG(p.q_heads == 0 || (p.q && p.q_stride >= int64_t(p.q_heads) * p.head_dim),
                      "rope: q is null or q_stride ", p.q_stride, " < q_heads · head_dim");
  SPARSELLM_CHECK_ARG(p.k_heads == 0 || (p.k && p.k_stride >= int64_t(p.k_heads) * p.head_dim),
                      "rope: k is null or k_stride ", p.k_stride, " < k_heads · head_dim");
  if (p.tokens == 0 || p.q_heads + p.k_heads == 0) return;
  SPARSELLM_CHECK_ARG(p.position && p.inv_freq, "rope: position or inv_freq is null");
  const KvCacheView& c = p.cache;
  const bool append = c.k != nullptr;
  if (append) {
    SPARSELLM_CHECK_ARG(c.v != nullptr && p.v != nullptr && p.slot != nullptr,
                        "rope: the cache append needs cache.v, v and slot");
    SPARSELLM_CHECK_ARG(c.kv_heads == p.k_heads && c.head_dim == p.head_dim && c.slots > 0 && c.max_seq > 0,
                        "rope: the cache (kv_heads ", c.kv_heads, ", head_dim ", c.head_dim, ", slots ", c.slots,
                        ", max_seq ", c.max_seq, ") does not hold k_heads=", p.k_heads, " heads of ", p.head_dim);
    SPARSELLM_CHECK_ARG(p.v_stride >= int64_t(p.k_heads) * p.head_dim, "rope: v_stride ", p.v_stride,
                        " < k_heads · head_dim");
  }
  RopeArgs a{p.q,        p.k,          p.v,          p.q_stride, p.k_stride, p.v_stride, p.q_heads, p.k_heads,
             p.head_dim / 2, p.position, p.inv_freq, c,          p.slot};
  const int64_t pairs = (int64_t(p.q_heads) + (append ? 2 : 1) * int64_t(p.k_heads)) * (p.head_dim / 2);
  const dim3 grid(static_cast<unsigned>(p.tokens),
                  static_cast<unsigned>(std::min<int64_t>(kernels::ceil_div(pairs, kThreads), kMaxBlocksPerToken)));
  kernels::dispatch_dtype(p.dtype, [&](auto storage) {
    kernels::launch_chained("rope_kernel", rope_kernel<decltype(storage)>, grid, kThreads, 0, stream, a);
  });
}

}  // namespace sparsellm
