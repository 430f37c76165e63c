// Hopper warpgroup MMA (wgmma, sm_90a) for the SpMM consumers at wide N: A
// from registers, B from the X stage in shared memory.
//
//   D[64, N] += A[64, 16] · B[16, N]      per warpgroup (4 consumer warps)
//   D[64, N] += A[64, 32] · B[32, N]      sparse (mma_sp_rs): A 2:4, 16 kept
//                                         values a row and their indices
//
// A: each warp supplies its 16 rows in the register layout of mma.m16n8k16
// (the fragments the formats already decode); sparse, in the layout of
// mma.sp.m16n8k32's A with its metadata register (sparsity selector 0: the
// PTX ISA gives sparse wgmma.m64nNk32 a warp's metadata the layout of
// mma.sp.m16n8k32's). B: the X stage, N rows of 128
// bytes (64 k values) whose 16-byte chunks are XOR-swizzled by row & 7 — the
// 128-byte swizzle of a K-major wgmma operand, so the stage must be 1024-byte
// aligned; k16 step j starts 32 j bytes into each row. D: N / 8 chunks of 4
// fp32 per thread in the layout of mma.m16n8k16's C, so the accumulators,
// the stream-K flush and the stores are shared with the mma.sync path.
//
// Ordering: the X stage is written through the generic proxy (cp.async) and
// read by wgmma through the async proxy, hence fence_async_shared() after
// the stage's full barrier; fence() orders the decoded registers and the
// accumulators before the wgmmas; wait_all() before the stage is released or
// the accumulators are read.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SPARSELLM_HAS_WGMMA 1
#else
#define SPARSELLM_HAS_WGMMA 0
#endif

namespace sparsellm::wgmma {

// Matrix descriptor of a 128-byte-swizzled K-major operand at shared address
// `addr` (1024-byte aligned for k step 0): start address, leading byte offset
// 16 (unused by this layout), stride byte offset 1024 (8 rows of 128 bytes),
// swizzle mode 1 (128 bytes); addresses and offsets in 16-byte units.
__device__ __forceinline__ uint64_t sw128_descriptor(uint32_t addr) {
  return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t(16 >> 4) << 16) | (uint64_t(1024 >> 4) << 32) |
         (uint64_t(1) << 62);
}
// The same operand advanced by `bytes` along K inside the swizzled rows.
__device__ __forceinline__ uint64_t advance(uint64_t descriptor, uint32_t bytes) { return descriptor + (bytes >> 4); }

#if SPARSELLM_HAS_WGMMA
__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
__device__ __forceinline__ void fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// One wgmma (OP: mma_async, or mma_async.sp with the metadata `meta` and
// sparsity selector 0) with scale-d = 1 (D += A · B), T's PTX type chosen.
#define SPARSELLM_WGMMA_RS(OP, SHAPE, TYPE, D_REGS, AB_REGS, ...)                                        \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\nwgmma." OP ".sync.aligned." SHAPE ".f32." TYPE "." \
               TYPE " " D_REGS ", " AB_REGS ", p, 1, 1, 0;\n}\n"                                          \
               : __VA_ARGS__                                                                             \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(meta)                           \
               : "memory")
#define SPARSELLM_WGMMA_T(OP, SHAPE, D_REGS, AB_REGS, ...)                    \
  if constexpr (std::is_same_v<T, __nv_bfloat16>)                          \
    SPARSELLM_WGMMA_RS(OP, SHAPE, "bf16", D_REGS, AB_REGS, __VA_ARGS__);   \
  else                                                                     \
    SPARSELLM_WGMMA_RS(OP, SHAPE, "f16", D_REGS, AB_REGS, __VA_ARGS__)
#define SPARSELLM_D8(i) "+f"(d[i][0]), "+f"(d[i][1]), "+f"(d[i][2]), "+f"(d[i][3])
#define SPARSELLM_D16 SPARSELLM_D8(0), SPARSELLM_D8(1)
#define SPARSELLM_D32 SPARSELLM_D16, SPARSELLM_D8(2), SPARSELLM_D8(3)
#define SPARSELLM_D64 SPARSELLM_D32, SPARSELLM_D8(4), SPARSELLM_D8(5), SPARSELLM_D8(6), SPARSELLM_D8(7)
#define SPARSELLM_D128 \
  SPARSELLM_D64, SPARSELLM_D8(8), SPARSELLM_D8(9), SPARSELLM_D8(10), SPARSELLM_D8(11), SPARSELLM_D8(12), \
      SPARSELLM_D8(13), SPARSELLM_D8(14), SPARSELLM_D8(15)
#define SPARSELLM_REGS_8 "{%0, %1, %2, %3}"
#define SPARSELLM_REGS_16 "{%0, %1, %2, %3, %4, %5, %6, %7}"
#define SPARSELLM_REGS_32 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define SPARSELLM_REGS_64                                                                                      \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define SPARSELLM_REGS_128                                                                                     \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
  "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "  \
  "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// A's and B's operands (A0–A3, B), then for mma_async.sp the metadata M and
// the sparsity selector.
#define SPARSELLM_AB_DENSE(A0, A1, A2, A3, B, M) "{%" #A0 ", %" #A1 ", %" #A2 ", %" #A3 "}, %" #B
#define SPARSELLM_AB_SPARSE(A0, A1, A2, A3, B, M) SPARSELLM_AB_DENSE(A0, A1, A2, A3, B, M) ", %" #M ", 0"
// One wgmma of N columns (a local `N`), K = "k16" or "k32".
#define SPARSELLM_WGMMA_N(OP, K, AB)                                                                        \
  static_assert(N == 8 || N == 16 || N == 32 || N == 64 || N == 128, "the SpMM kernels' column blocks");  \
  if constexpr (N == 8) {                                                                                   \
    SPARSELLM_WGMMA_T(OP, "m64n8" K, SPARSELLM_REGS_8, AB(4, 5, 6, 7, 8, 9), SPARSELLM_D8(0));              \
  } else if constexpr (N == 16) {                                                                           \
    SPARSELLM_WGMMA_T(OP, "m64n16" K, SPARSELLM_REGS_16, AB(8, 9, 10, 11, 12, 13), SPARSELLM_D16);          \
  } else if constexpr (N == 32) {                                                                           \
    SPARSELLM_WGMMA_T(OP, "m64n32" K, SPARSELLM_REGS_32, AB(16, 17, 18, 19, 20, 21), SPARSELLM_D32);        \
  } else if constexpr (N == 64) {                                                                           \
    SPARSELLM_WGMMA_T(OP, "m64n64" K, SPARSELLM_REGS_64, AB(32, 33, 34, 35, 36, 37), SPARSELLM_D64);        \
  } else {                                                                                                  \
    SPARSELLM_WGMMA_T(OP, "m64n128" K, SPARSELLM_REGS_128, AB(64, 65, 66, 67, 68, 69), SPARSELLM_D128);     \
  }

// D[64 rows of the warpgroup, N] += A (this warp's 16 rows, mma.m16n8k16 A registers) · B (descriptor).
template <typename T, int N>
__device__ __forceinline__ void mma_rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t b) {
  const uint32_t meta = 0;  // not an operand of the dense instruction
  SPARSELLM_WGMMA_N("mma_async", "k16", SPARSELLM_AB_DENSE)
}
// D[64 rows of the warpgroup, N] += A (this warp's 16 rows of a 2:4 sparse
// 64 × 32 A: mma.sp.m16n8k32 A registers, metadata `meta`) · B (descriptor of k32).
template <typename T, int N>
__device__ __forceinline__ void mma_sp_rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t b, uint32_t meta) {
  SPARSELLM_WGMMA_N("mma_async.sp", "k32", SPARSELLM_AB_SPARSE)
}

#undef SPARSELLM_WGMMA_RS
#undef SPARSELLM_WGMMA_N
#undef SPARSELLM_AB_DENSE
#undef SPARSELLM_AB_SPARSE
#undef SPARSELLM_WGMMA_T
#undef SPARSELLM_D8
#undef SPARSELLM_D16
#undef SPARSELLM_D32
#undef SPARSELLM_D64
#undef SPARSELLM_D128
#undef SPARSELLM_REGS_8
#undef SPARSELLM_REGS_16
#undef SPARSELLM_REGS_32
#undef SPARSELLM_REGS_64
#undef SPARSELLM_REGS_128
#endif  // SPARSELLM_HAS_WGMMA

}  // namespace sparsellm::wgmma
