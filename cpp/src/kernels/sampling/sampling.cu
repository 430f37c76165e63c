// Next-token sampling (sampling.h), one block of 512 threads per sequence:
//
//   greedy (temperature ≤ 0, or top_k = 1): argmax, lowest index on ties.
//   else:   w_v = ⌊2^40 · 2^((x_v − max x) · log2 e / temperature)⌋   integer weights, w ≤ 2^40
//           keep   key_v ≥ τ_k  (τ_k: the top_k-th largest logit; ties with it kept,
//                                as Hugging Face's TopKLogitsWarper does)
//           and    key_v ≥ τ_p  (τ_p: the largest logit such that the kept tokens at or above
//                                it hold ≥ ⌈top_p · Σ kept w⌉ weight: the smallest set of most
//                                likely tokens reaching top_p, ties kept)
//           draw   r = Philox4x32-10(key = seed[b], counter = (*step, 0, 0, 0)), first two
//                  words as 64 bits (sampling/philox.h); target = ⌊r · W / 2^64⌋ with
//                  W = Σ kept w; the token whose weight interval, in a fixed order of the
//                  vocabulary, holds target.
//
// Orders are taken on a 16-bit key, the logit's bits mapped so that unsigned
// order is numeric order (NaN → 0, below everything and never kept; −0 → +0).
// The thresholds are found without sorting by a two-digit radix select
// (high byte, then low byte) over a 256-bin histogram in shared memory: each
// digit costs one pass over the row; counts (top-k) or weights (top-p) are
// integers, so the histograms, and with them the chosen token, are the same
// on every run (floating-point atomics would not be). Passes over a row: argmax,
// 2 per threshold, the weight sums, and a rescan of one thread's elements.
// The row is read 8 elements (16 bytes) at a time where vocab, stride and
// pointer allow; the "fixed order" is thread-major (thread 0's elements first),
// which any fixed order serves as well as index order.
#include "kernels/sampling/sampling.h"

#include <cmath>
#include <type_traits>

#include "common/check.h"
#include "kernels/device_math.cuh"
#include "kernels/launch.h"
#include "kernels/sampling/philox.h"

namespace sparsellm {
namespace {

using namespace kernels;
using u64 = unsigned long long;

constexpr int kThreads = 512;
constexpr float kWeightScale = 1099511627776.f;  // 2^40
constexpr float kLog2e = 1.4426950408889634f;

struct SampleArgs {
  const void* logits;  // [batch, vocab], row stride `stride`
  int64_t vocab, stride;
  const float* temperature;  // [batch]
  const int32_t* top_k;      // [batch]
  const float* top_p;        // [batch]
  const uint64_t* seed;      // [batch]
  const int32_t* step;       // [1]
  int32_t* next_token;       // [batch]
};

struct Shared {
  u64 hist[256];
  u64 red[32];
  u64 need, above;
  uint32_t bin;
  bool found;
};

template <typename T>
__device__ __forceinline__ float bits_to_float(uint16_t b);
template <>
__device__ __forceinline__ float bits_to_float<__half>(uint16_t b) { return __half2float(__ushort_as_half(b)); }
template <>
__device__ __forceinline__ float bits_to_float<__nv_bfloat16>(uint16_t b) {
  return __bfloat162float(__ushort_as_bfloat16(b));
}

// Unsigned order of the key = numeric order of the value; NaN → 0, −0 → +0.
template <typename T>
__device__ __forceinline__ uint32_t order_key(uint16_t b) {
  constexpr uint32_t kExp = std::is_same_v<T, __half> ? 0x7C00u : 0x7F80u;
  constexpr uint32_t kMantissa = 0x7FFFu & ~kExp;
  if ((b & kExp) == kExp && (b & kMantissa) != 0) return 0;
  if ((b & 0x7FFFu) == 0) b = 0;
  return (b & 0x8000u) ? (~uint32_t(b) & 0xFFFFu) : (uint32_t(b) | 0x8000u);
}

// Calls f(index, bits) for this thread's elements of the row, in a fixed order.
template <int VEC, typename F>
__device__ __forceinline__ void for_each_logit(const uint16_t* row, int64_t vocab, F&& f) {
  const int64_t vectors = vocab / VEC;
  for (int64_t i = threadIdx.x; i < vectors; i += blockDim.x) {
    if constexpr (VEC == 8) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(row) + i);
      const int32_t base = int32_t(i * 8);
      auto pair = [&](int32_t e, uint32_t word) {  // elements e, e + 1 (little-endian halves)
        f(base + e, uint16_t(word & 0xFFFFu));
        f(base + e + 1, uint16_t(word >> 16));
      };
      pair(0, raw.x);
      pair(2, raw.y);
      pair(4, raw.z);
      pair(6, raw.w);
    } else {
      f(int32_t(i), __ldg(row + i));
    }
  }
}

__device__ __forceinline__ u64 warp_inclusive_scan(u64 v) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int o = 1; o < 32; o *= 2) {
    const u64 n = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += n;
  }
  return v;
}

// Exclusive prefix over the block (thread order) of v; `total` gets the sum.
__device__ __forceinline__ u64 block_exclusive_scan(u64 v, u64* shared, u64& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const u64 incl = warp_inclusive_scan(v);
  __syncthreads();
  if (lane == 31) shared[warp] = incl;
  __syncthreads();
  u64 before = 0, sum = 0;
  for (int w = 0; w < int(blockDim.x >> 5); ++w) {
    if (w < warp) before += shared[w];
    sum += shared[w];
  }
  total = sum;
  return before + incl - v;
}

// The largest key τ with Σ_{key_v ≥ max(τ, floor)} weight(v) ≥ need_of(total), where
// total = Σ_{key_v ≥ floor} weight(v); floor itself when total < need.
// Two passes, one per byte of the key: histogram of the digit over the
// candidates, then warp 0 walks the bins from the top until the weight reaches
// what is still needed. Block-uniform result.
template <typename T, int VEC, typename Weight, typename Need>
__device__ uint32_t radix_select(const uint16_t* row, int64_t vocab, uint32_t floor, Weight weight, Need need_of,
                                 Shared& sh) {
  uint32_t prefix = 0;
  for (int pass = 0; pass < 2; ++pass) {
    const int shift = pass == 0 ? 8 : 0;
    for (int i = threadIdx.x; i < 256; i += blockDim.x) sh.hist[i] = 0;
    __syncthreads();
    for_each_logit<VEC>(row, vocab, [&](int32_t, uint16_t bits) {
      const uint32_t key = order_key<T>(bits);
      if (key >= floor && (pass == 0 || (key >> 8) == (prefix >> 8))) {
        const u64 w = weight(bits);
        if (w) atomicAdd(&sh.hist[(key >> shift) & 255u], w);
      }
    });
    __syncthreads();
    if (threadIdx.x < 32) {
      const int lane = threadIdx.x;
      u64 h[8], sum = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        h[j] = sh.hist[255 - 8 * lane - j];  // lane 0 owns the 8 highest bins
        sum += h[j];
      }
      const u64 incl = warp_inclusive_scan(sum);
      const u64 total = __shfl_sync(0xffffffffu, incl, 31);
      const u64 need = pass == 0 ? need_of(total) : sh.need;
      const u64 above = pass == 0 ? 0 : sh.above;
      const u64 rem = need - above;  // ≥ 1: need ≥ 1, and above < need after pass 0
      __syncwarp();
      if (pass == 0 && lane == 0) {
        sh.need = need;
        sh.found = total >= need;
      }
      const u64 excl = incl - sum;
      if ((pass == 1 || total >= need) && excl < rem && rem <= incl) {
        u64 cum = excl;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          if (cum + h[j] >= rem) {
            sh.bin = uint32_t(255 - 8 * lane - j);
            sh.above = above + cum;
            break;
          }
          cum += h[j];
        }
      }
    }
    __syncthreads();
    if (!sh.found) return floor;
    prefix |= sh.bin << shift;
  }
  return prefix > floor ? prefix : floor;
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) sample_kernel(SampleArgs a) {
  kernels::begin_chained_kernel();  // chained launch (kernels/launch.h)
  __shared__ Shared sh;
  const int64_t b = blockIdx.x;
  const uint16_t* row = static_cast<const uint16_t*>(a.logits) + b * a.stride;

  // Argmax: the largest (key, −index) pair packed into 64 bits.
  u64 best = 0;
  for_each_logit<VEC>(row, a.vocab, [&](int32_t i, uint16_t bits) {
    const u64 packed = (u64(order_key<T>(bits)) << 32) | u64(~uint32_t(i));
    best = packed > best ? packed : best;
  });
  best = block_reduce(best, MaxOp{}, u64(0), sh.red);
  const int32_t argmax = int32_t(~uint32_t(best));

  const float temperature = a.temperature[b];
  const int32_t top_k = a.top_k[b];
  const float top_p = a.top_p[b];
  const float max_val = bits_to_float<T>(row[argmax]);
  const float coef = kLog2e / temperature;
  if (!(temperature > 0.f) || top_k == 1 || !isfinite(max_val) || !isfinite(coef)) {
    if (threadIdx.x == 0) a.next_token[b] = argmax;
    return;
  }
  auto weight = [max_val, coef](uint16_t bits) -> u64 {
    return __float2ull_rz(exp2f((bits_to_float<T>(bits) - max_val) * coef) * kWeightScale);
  };
  auto unit = [](uint16_t) -> u64 { return 1; };

  uint32_t floor = 1;  // every non-NaN logit
  if (top_k > 0 && top_k < a.vocab) {
    floor = radix_select<T, VEC>(row, a.vocab, floor, unit, [top_k](u64) { return u64(top_k); }, sh);
  }
  if (top_p < 1.f) {
    floor = radix_select<T, VEC>(row, a.vocab, floor, weight, [top_p](u64 total) {
      const double n = ceil(double(top_p) * double(total));
      return n < 1.0 ? u64(1) : u64(n);
    }, sh);
  }

  u64 mine = 0;
  for_each_logit<VEC>(row, a.vocab, [&](int32_t, uint16_t bits) {
    if (order_key<T>(bits) >= floor) mine += weight(bits);
  });
  u64 total;
  const u64 before = block_exclusive_scan(mine, sh.red, total);
  const u64 target = __umul64hi(philox_draw64(a.seed[b], uint32_t(*a.step)), total);  // in [0, total)
  if (before <= target && target - before < mine) {
    u64 cum = before;
    int32_t token = -1;
    for_each_logit<VEC>(row, a.vocab, [&](int32_t i, uint16_t bits) {
      if (token < 0 && order_key<T>(bits) >= floor) {
        cum += weight(bits);
        if (cum > target) token = i;
      }
    });
    a.next_token[b] = token;
  }
}

}  // namespace

void sample_tokens(const SamplingParams& p, cudaStream_t stream) {
  SPARSELLM_CHECK_ARG(p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16, "sample_tokens: unknown dtype");
  SPARSELLM_CHECK_ARG(p.batch >= 0 && p.batch <= INT32_MAX, "sample_tokens: batch=", p.batch, " out of range");
  // Weights are ≤ 2^40 each and summed in 64 bits: at most 2^24 tokens.
  SPARSELLM_CHECK_ARG(p.vocab > 0 && p.vocab <= (int64_t(1) << 24), "sample_tokens: vocab=", p.vocab,
                      " out of range [1, 2^24]");
  if (p.batch == 0) return;
  SPARSELLM_CHECK_ARG(p.logits != nullptr && p.next_token != nullptr, "sample_tokens: logits and next_token must ",
                      "not be null");
  SPARSELLM_CHECK_ARG(p.temperature != nullptr && p.top_k != nullptr && p.top_p != nullptr && p.seed != nullptr &&
                          p.step != nullptr,
                      "sample_tokens: temperature, top_k, top_p, seed and step must be device pointers, not null");
  const int64_t stride = p.logits_stride == 0 ? p.vocab : p.logits_stride;
  SPARSELLM_CHECK_ARG(stride >= p.vocab, "sample_tokens: logits_stride (", stride, ") must be >= vocab (", p.vocab,
                      ")");
  const bool vec8 = p.vocab % 8 == 0 && stride % 8 == 0 && aligned16(p.logits);
  const SampleArgs args{p.logits, p.vocab, stride, p.temperature, p.top_k, p.top_p, p.seed, p.step, p.next_token};
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (vec8) {
      kernels::launch_chained("sample_kernel", sample_kernel<T, 8>, unsigned(p.batch), kThreads, 0, stream, args);
    } else {
      kernels::launch_chained("sample_kernel", sample_kernel<T, 1>, unsigned(p.batch), kThreads, 0, stream, args);
    }
  });
}

}  // namespace sparsellm
