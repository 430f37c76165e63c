// LayerNorm / RMSNorm fused with the residual add (norm.h):
//
//   v = residual ? round(residual + x) → residual : x          (per row, [width])
//   LayerNorm: out = (v − mean(v)) · rsqrt(mean((v − mean)²) + eps) · gamma + beta
//   RMSNorm:   out = v · rsqrt(mean(v²) + eps) · gamma
//
// One block per row, threads = ⌈vectors / kCachedVectors⌉ rounded to a warp
// (32 ≤ threads ≤ 512), so a row of up to 512 · 32 elements is read once and
// held in registers: pass 1 loads (and adds and writes back the residual),
// the statistics come from the registers (two block reductions for
// LayerNorm: mean, then the centred sum of squares; one for RMSNorm), pass 2
// writes out. Elements of wider rows past the register cache are read again
// from global memory (their stored, already rounded values).
//
// Every element is read and written by one and the same thread, so out may
// alias x or residual (no __restrict__, no non-coherent loads). Vectors are
// 8 elements (16 bytes) when width and every pointer allow it, else 1.
//
// gamma and beta are weights, which no kernel writes once the model is loaded
// (kernels/launch.h): their cached vectors are read before the wait for the
// previous kernel, so their DRAM latency overlaps its end rather than
// following the reduction.
#include "kernels/norm/norm.h"

#include <algorithm>
#include <type_traits>

#include "common/check.h"
#include "kernels/device_math.cuh"
#include "kernels/launch.h"

namespace sparsellm {
namespace {

using namespace kernels;

constexpr int kMaxThreads = 512;
constexpr int kCachedFloats = 32;  // per thread: 4 vectors of 8 or 32 single elements

struct NormArgs {
  const void* x;        // [n, width] or null
  void* residual;       // [n, width] or null
  const void* gamma;    // [width]
  const void* beta;     // [width] or null
  void* out;            // [n, width]
  int64_t width;
  float eps;
  bool rms;
};

// VEC elements as stored: one 16-byte vector, or one element.
template <typename T, int VEC>
using StoredVec = std::conditional_t<VEC == 8, uint4, T>;

template <typename T, int VEC>
__global__ void __launch_bounds__(kMaxThreads) norm_kernel(NormArgs a) {
  constexpr int kIters = kCachedFloats / VEC;  // vectors per thread held in registers
  __shared__ float shared[32];
  const int64_t row = blockIdx.x;
  const int64_t vectors = a.width / VEC;
  const int64_t step = blockDim.x;

  // Chained launch (kernels/launch.h): the weights of the cached 16-byte
  // vectors first (single elements would take 64 more registers), then the wait.
  kernels::allow_dependent_launch();
  using Stored = StoredVec<T, VEC>;
  constexpr int kHeld = VEC == 8 ? kIters : 1;
  const Stored* gamma_vec = static_cast<const Stored*>(a.gamma);
  const Stored* beta_vec = static_cast<const Stored*>(a.beta);
  Stored gamma_held[kHeld] = {}, beta_held[kHeld] = {};
  if constexpr (VEC == 8) {
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      const int64_t c = threadIdx.x + it * step;
      if (c < vectors) {
        gamma_held[it] = gamma_vec[c];
        if (beta_vec) beta_held[it] = beta_vec[c];
      }
    }
  }
  kernels::wait_for_prerequisite_grids();
  const T* x = a.x ? static_cast<const T*>(a.x) + row * a.width : nullptr;
  T* res = a.residual ? static_cast<T*>(a.residual) + row * a.width : nullptr;
  const T* src = res ? res : x;  // where v lives once pass 1 is done
  T* out = static_cast<T*>(a.out) + row * a.width;

  // Pass 1: v (with the residual add), cached; Σv or Σv².
  float cache[kIters][VEC];
  float acc = 0.f;
  auto input = [&](int64_t c, float (&v)[VEC]) {
    load_vec<T, VEC>(src + c * VEC, v);
    if (res && x) {
      float xv[VEC];
      load_vec<T, VEC>(x + c * VEC, xv);
#pragma unroll
      for (int e = 0; e < VEC; ++e) v[e] = round_to<T>(v[e] + xv[e]);
      store_vec<T, VEC>(res + c * VEC, v);
    }
  };
  auto accumulate = [&](const float (&v)[VEC]) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc += a.rms ? v[e] * v[e] : v[e];
  };
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int64_t c = threadIdx.x + it * step;
    if (c < vectors) {
      input(c, cache[it]);
      accumulate(cache[it]);
    }
  }
  for (int64_t c = threadIdx.x + kIters * step; c < vectors; c += step) {
    float v[VEC];
    input(c, v);
    accumulate(v);
  }
  const float total = block_reduce(acc, SumOp{}, 0.f, shared);
  const float inv_width = 1.f / float(a.width);
  float mean = 0.f, rstd;
  if (a.rms) {
    rstd = rsqrtf(total * inv_width + a.eps);
  } else {
    mean = total * inv_width;
    float sq = 0.f;
#pragma unroll
    for (int it = 0; it < kIters; ++it) {
      if (threadIdx.x + it * step < vectors) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) sq += (cache[it][e] - mean) * (cache[it][e] - mean);
      }
    }
    for (int64_t c = threadIdx.x + kIters * step; c < vectors; c += step) {
      float v[VEC];
      load_vec<T, VEC>(src + c * VEC, v);
#pragma unroll
      for (int e = 0; e < VEC; ++e) sq += (v[e] - mean) * (v[e] - mean);
    }
    rstd = rsqrtf(block_reduce(sq, SumOp{}, 0.f, shared) * inv_width + a.eps);
  }

  // Pass 2: out = (v − mean) · rstd · gamma (+ beta).
  auto write = [&](int64_t c, const float (&v)[VEC], const Stored& gamma_c, const Stored& beta_c) {
    float g[VEC], b[VEC], y[VEC];
    load_vec<T, VEC>(reinterpret_cast<const T*>(&gamma_c), g);
    if (beta_vec) {
      load_vec<T, VEC>(reinterpret_cast<const T*>(&beta_c), b);
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) b[e] = 0.f;
    }
#pragma unroll
    for (int e = 0; e < VEC; ++e) y[e] = (v[e] - mean) * rstd * g[e] + b[e];
    store_vec<T, VEC>(out + c * VEC, y);
  };
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int64_t c = threadIdx.x + it * step;
    if (c >= vectors) continue;
    if constexpr (VEC == 8) {
      write(c, cache[it], gamma_held[it], beta_held[it]);
    } else {
      write(c, cache[it], gamma_vec[c], beta_vec ? beta_vec[c] : Stored{});
    }
  }
  for (int64_t c = threadIdx.x + kIters * step; c < vectors; c += step) {
    float v[VEC];
    load_vec<T, VEC>(src + c * VEC, v);
    write(c, v, gamma_vec[c], beta_vec ? beta_vec[c] : Stored{});
  }
}

}  // namespace

void norm(const NormParams& p, cudaStream_t stream) {
  SPARSELLM_CHECK_ARG(p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16, "norm: unknown dtype");
  SPARSELLM_CHECK_ARG(p.kind == NormKind::kLayerNorm || p.kind == NormKind::kRmsNorm, "norm: unknown kind");
  SPARSELLM_CHECK_ARG(p.n >= 0 && p.width > 0, "norm: need n >= 0 and width > 0; got n=", p.n, " width=", p.width);
  if (p.n == 0) return;
  SPARSELLM_CHECK_ARG(p.x != nullptr || p.residual != nullptr, "norm: x and residual are both null");
  SPARSELLM_CHECK_ARG(p.gamma != nullptr && p.out != nullptr, "norm: gamma and out must not be null");
  SPARSELLM_CHECK_ARG(p.kind == NormKind::kLayerNorm || p.beta == nullptr, "norm: RMSNorm takes no beta");
  SPARSELLM_CHECK_ARG(p.eps >= 0.f, "norm: eps must be >= 0, got ", p.eps);
  SPARSELLM_CHECK_ARG(p.n <= INT32_MAX, "norm: n=", p.n, " exceeds the grid limit");

  const bool vec8 = p.width % 8 == 0 && kernels::aligned16(p.gamma) && kernels::aligned16(p.out) &&
                    (p.x == nullptr || kernels::aligned16(p.x)) &&
                    (p.residual == nullptr || kernels::aligned16(p.residual)) &&
                    (p.beta == nullptr || kernels::aligned16(p.beta));
  const int vec = vec8 ? 8 : 1;
  const int64_t vectors = p.width / vec;
  const int64_t per_thread = kCachedFloats / vec;
  const int threads = int(std::clamp<int64_t>(kernels::ceil_div(kernels::ceil_div(vectors, per_thread), 32) * 32, 32,
                                              kMaxThreads));
  const NormArgs args{p.x, p.residual, p.gamma, p.beta, p.out, p.width, p.eps, p.kind == NormKind::kRmsNorm};
  kernels::dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (vec8) {
      kernels::launch_chained("norm_kernel", norm_kernel<T, 8>, unsigned(p.n), threads, 0, stream, args);
    } else {
      kernels::launch_chained("norm_kernel", norm_kernel<T, 1>, unsigned(p.n), threads, 0, stream, args);
    }
  });
}

}  // namespace sparsellm
