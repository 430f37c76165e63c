// RMSNorm folded into the SpMMs on either side of it (sparsellm/spmm.h:
// SpmmNormFold), in blocks of up to kSpmmNormFoldMaxRows columns (one column
// pass: a decode step). With h the residual stream, γ the norm's weight and
// H its width, the unfolded step
//
//   h += A · Woᵀ;   x = h / rms(h) ⊙ γ;   Y = x · Wqᵀ        rms(h)[n] = sqrt(Σ_m h[n, m]² / H + eps)
//
// becomes, with no kernel between the two products,
//
//   out (the first product's store):   h[n, m] += acc;  normed[n, m] = h[n, m] · γ[m];
//                                      sumsq[r, n] = Σ_{m in tile row r} h[n, m]²
//   in  (the second product's store):  Y[n, m] = acc · s[n],  s[n] = (Σ_r sumsq[r, n] / H + eps)^-½
//
// since 1 / rms(h)[n] scales row n of X, hence row n of X · Wqᵀ. The out
// part runs on the block that stores a tile row (stream_k::reduce_row's
// owner), so every element of h is read and written by one thread; a tile
// row's sums go to sumsq without atomics (deterministic), each row a slot.
// The in part computes s once a block, after the wait for the previous kernel
// (which wrote sumsq), before the block's first store (prologue).
//
// Shared memory (a block's epilogue bytes, after its last-block flag):
//   [BN] fp32 s of the block's columns
//   [2][kConsumerWarps][BN] fp32 per-warp sums of a stored tile row, by row parity: a
//                   warp's next store never lands on sums still being read
//                   (between two stores of a block every warp passes the
//                   barrier of the store in the middle)
#pragma once

#include <cstdint>

#include "kernels/device_math.cuh"
#include "kernels/spmm/stream_k.cuh"

namespace sparsellm::norm_fold {

using stream_k::kConsumerWarps;

template <int BN>
constexpr bool kFolds = BN <= kSpmmNormFoldMaxRows;
template <int BN>
constexpr int kScratchBytes = kFolds<BN> ? (BN + 2 * kConsumerWarps * BN) * 4 : 0;

template <int BN, typename T>
__device__ __forceinline__ bool scales(const stream_k::KernelArgs<T>& a) {
  if constexpr (kFolds<BN>) return a.norm_sumsq_in != nullptr;
  return false;
}
template <int BN, typename T>
__device__ __forceinline__ bool updates_residual(const stream_k::KernelArgs<T>& a) {
  if constexpr (kFolds<BN>) return a.norm_gamma != nullptr;
  return false;
}

// The in part's s[c] for the block's columns c < BN into scratch[c] (consumer
// threads; `sync` is their barrier), after the wait for the previous kernel:
// the sums of up to 32 tile rows (a width of 4096) in flight at once.
template <int BN, typename T, typename Sync>
__device__ __forceinline__ void prologue(const stream_k::KernelArgs<T>& a, float* scratch, Sync sync) {
  if (!scales<BN>(a)) return;
  const int c = threadIdx.x, n = blockIdx.y * BN + c;
  if (c < BN && n < a.n) {
    const int parts = (a.k + stream_k::kTileM - 1) / stream_k::kTileM;
    float sum = 0.0f;
#pragma unroll 32
    for (int r = 0; r < parts; ++r) sum += a.norm_sumsq_in[size_t(r) * a.n + n];
    scratch[c] = rsqrtf(sum * a.norm_inv_k + a.norm_eps);
  }
  sync();
}

// The out part's sumsq[row, n0 + c] from each thread's Σ h² over its rows,
// sq[nt][e] for column nt · 8 + (lane & 3) · 2 + e (the mma accumulator
// layout): lanes of one column pair first, then the warps through scratch.
template <int BN, typename T, typename Sync>
__device__ __forceinline__ void store_sumsq(const stream_k::KernelArgs<T>& a, int row, int n0,
                                            float (&sq)[BN / 8][2], float* scratch, Sync sync) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float* sums = scratch + BN + (row & 1) * kConsumerWarps * BN;  // [kConsumerWarps][BN]
#pragma unroll
  for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float v = sq[nt][e];
#pragma unroll
      for (int o = 4; o < 32; o <<= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
      if (lane < 4) sums[warp * BN + nt * 8 + lane * 2 + e] = v;
    }
  sync();
  const int c = threadIdx.x;
  if (c < BN && n0 + c < a.n) {
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kConsumerWarps; ++w) total += sums[w * BN + c];
    a.norm_sumsq_out[size_t(row) * a.n + n0 + c] = total;
  }
}

}  // namespace sparsellm::norm_fold
