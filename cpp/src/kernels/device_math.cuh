// Device helpers shared by the transformer kernels: storage-type conversions,
// 16-byte vector loads and stores of 8 elements, warp and block reductions,
// and the host-side dtype dispatch.
//
// Storage is fp16 or bf16 (T = __half / __nv_bfloat16); all math is fp32.
// A "vector" is VEC consecutive elements: VEC = 8 moves 16 bytes with one
// instruction and needs 16-byte aligned addresses; VEC = 1 is the fallback for
// unaligned pointers, strides or widths.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "sparsellm/types.h"

namespace sparsellm::kernels {

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Programmatic dependent launch (sm_90; no-ops before), the device side of
// kernels/launch.h: wait_for_prerequisite_grids() before touching memory an
// earlier kernel may touch, allow_dependent_launch() to let the next kernel's
// blocks be scheduled. Without the launch attribute both are harmless.
__device__ __forceinline__ void allow_dependent_launch() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_for_prerequisite_grids() {
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
// First thing in a transformer kernel launched chained: let the next kernel be
// scheduled, then wait for the previous one. Allowing before waiting is safe:
// the next kernel waits too before it touches memory another kernel writes, and
// its wait returns only when this grid, which waited in turn, has ended. It
// lets the next SpMM stream its first weight tiles while this kernel waits.
__device__ __forceinline__ void begin_chained_kernel() {
  allow_dependent_launch();
  wait_for_prerequisite_grids();
}

// Rounds an fp32 value to the storage type and back.
template <typename T>
__device__ __forceinline__ float round_to(float v) { return to_float(from_float<T>(v)); }

// VEC consecutive elements at p (16-byte aligned when VEC == 8) → fp32.
template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* p, float (&f)[VEC]) {
  static_assert(VEC == 1 || VEC == 8, "vector width 1 or 8");
  if constexpr (VEC == 8) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; ++i) f[i] = to_float(e[i]);
  } else {
    f[0] = to_float(p[0]);
  }
}

// fp32 → VEC consecutive elements at p (rounded to nearest).
template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* p, const float (&f)[VEC]) {
  static_assert(VEC == 1 || VEC == 8, "vector width 1 or 8");
  if constexpr (VEC == 8) {
    uint4 raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; ++i) e[i] = from_float<T>(f[i]);
    *reinterpret_cast<uint4*>(p) = raw;
  } else {
    p[0] = from_float<T>(f[0]);
  }
}

struct SumOp {
  template <typename V>
  __device__ __forceinline__ V operator()(V a, V b) const { return a + b; }
};
struct MaxOp {
  template <typename V>
  __device__ __forceinline__ V operator()(V a, V b) const { return a > b ? a : b; }
};

// Butterfly reduction over the WIDTH lanes of each aligned lane group; every
// lane of the group ends with the same value (bitwise: a + b == b + a).
template <int WIDTH = 32, typename V, typename Op>
__device__ __forceinline__ V warp_reduce(V v, Op op) {
#pragma unroll
  for (int offset = WIDTH / 2; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Reduction over the whole block (blockDim.x a multiple of 32, ≤ 1024); every
// thread gets the result. `shared` holds 32 values of V. Deterministic: every
// warp reduces the same per-warp values in the same order.
template <typename V, typename Op>
__device__ __forceinline__ V block_reduce(V v, Op op, V identity, V* shared) {
  v = warp_reduce(v, op);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < int(blockDim.x >> 5) ? shared[lane] : identity;
  return warp_reduce(v, op);
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Calls f(T{}) with T the storage type of `dtype`.
template <typename F>
void dispatch_dtype(DType dtype, F&& f) {
  if (dtype == DType::kFloat16) {
    f(__half{});
  } else {
    f(__nv_bfloat16{});
  }
}

}  // namespace sparsellm::kernels
