// Split 2:4 SpMM: Y[N, M] = X[N, K] · W[M, K]ᵀ (+ bias), W in the split 2:4
// format (sparsellm/split24.h): W = P + R, P 2:4 sparse, R the third and
// fourth nonzeros of the groups of four that have them.
//
// In MMA terms the block computes Yᵀ tiles: per row block (16 rows) and k32
// block, A = P's 16 × 16 kept values (one 16-byte shared load a lane: the
// format stores them as the lane's registers) with their 2-bit indices, B = Xᵀ
// (ldmatrix), mma.sp.m16n8k32 into fp32 accumulators. R's entries of the row
// block are scattered by the lanes into the warp's 1 KiB staging tile, laid
// out as P's slots (zero outside them), read back as A registers (one 16-byte
// load a lane and block), undone, and multiplied by mma.sp with the same B and
// the constant indices (2, 3) — R holds only columns 2 and 3 of a group. A
// dense tile is multiplied by m16n8k16 straight from its stage.
//
// Warp specialization, 10 warps, as the bitmap kernel (consumer_warps.cuh):
//   warps 8, 9 (producers)   alternate tiles: one bulk copy of the tile's
//                            words, then the X tile X[n0 .., 64 c ..]
//   warps 0..7 (consumers)   warp w owns row block w × all BN columns
// At BN = 128 the block is the 8 consumer warps alone, which refill their own
// ring (run_block_self_fed), for the registers of 128 columns' accumulators.
//
// Widths: BN = 8, 16, 32, 64, 128; more columns run in passes of 128 (each
// pass streams W again). On sm_90a from 32 columns (kUseWgmma) the four warps of a
// warpgroup multiply their 64 rows together by wgmma.sp, A = each warp's slot
// registers and indices as above (sparse wgmma.m64nNk32 takes a warp's A and
// metadata in mma.sp.m16n8k32's layout), B = the X stage read once by
// descriptor instead of by eight warps' ldmatrix; R's wgmma.sp is issued for
// every split tile (a warp without entries gives zeros): a wgmma under a
// condition is serialized by ptxas (C7520).
//
// Bytes a weight at sparsity s (random masks): 1 byte a weight for the slots
// (half the tile's elements, zero or not) + 1/8 for the indices + 4 per
// residual nonzero — ≈ 1.16 at 80%, 1.22 at 70%, 1.34 at 60%: less than dense
// from any sparsity, with no per-element decode (kernel-notes: "Split 2:4").
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/check.h"
#include "kernels/spmm/consumer_warps.cuh"
#include "kernels/spmm/ptx.cuh"
#include "kernels/spmm/stream_k.cuh"
#include "sparsellm/device.h"
#include "sparsellm/spmm.h"
#include "sparsellm/split24.h"

namespace sparsellm {
namespace {

using namespace split24;
using stream_k::KernelArgs;
using namespace consumer_warps;
static_assert(stream_k::kTileM == kTileM && stream_k::kTileK == kTileK, "the stream-K launch assumes this tile");

// A stage's tile reservation: the largest tile, rounded to 1024 bytes so that
// the X tile after it is 1024-byte aligned (check_x_alignment).
constexpr int kStageTileBytes = x_aligned(kMaxTileWords * 4);
constexpr int kStagingBytes = kResidualTileBytes;  // a warp's staging tile of R's slots

// Lane l's A registers of k32 block j from a slot block pair at `slots` (lane
// l's four registers of block j at byte 512 j + 16 l).
__device__ __forceinline__ void load_slots(uint32_t slots, uint32_t (&a)[2][4]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const uint4 v = ptx::ld_shared_v4(slots + 512 * j + 16 * lane);
    a[j][0] = v.x, a[j][1] = v.y, a[j][2] = v.z, a[j][3] = v.w;
  }
}

// B: for 8 columns nt and k32 block j, one ldmatrix.x4 of the X stage's k
// chunks 4 j .. 4 j + 3: mma.sp's B, and the dense B of k16 steps 2 j
// (registers 0, 1) and 2 j + 1 (2, 3).
__device__ __forceinline__ void load_x_fragments(uint32_t x_stage, int nt, uint32_t (&b)[2][4]) {
  const int lane = threadIdx.x & 31;
  const uint32_t xrow = lane & 7;
  const uint32_t xb = x_stage + xrow * 128 + ((((lane >> 3) & 3) ^ xrow) << 4);
#pragma unroll
  for (int j = 0; j < 2; ++j) ptx::ldmatrix_x4((xb + nt * 1024) ^ (j << 6), b[j]);
}

// A dense tile: row block `warp` as four m16n8k16 A fragments (128-byte rows,
// 16-byte chunks swizzled by row % 8), multiplied by m16n8k16.
template <typename T, int BN>
__device__ __forceinline__ void consume_dense(uint32_t stage, int warp, Accumulators<BN>& acc) {
  const int lane = threadIdx.x & 31, r = lane & 15;
  const uint32_t step0 = stage + 4 * kDenseWord + 16 * 128 * warp + r * 128 + (((lane >> 4) ^ (r & 7)) << 4);
  uint32_t a[4][4];
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) ptx::ldmatrix_x4(swizzled_k16_step(step0, ks), a[ks]);
  if constexpr (kUseWgmma<BN>) {
#if SPARSELLM_HAS_WGMMA
    wgmma_tile<T, BN>(a, stage + kStageTileBytes, acc);  // the warpgroup's 64 rows × BN
#endif
  } else {
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
      uint32_t b[2][4];
      load_x_fragments(stage + kStageTileBytes, nt, b);
#pragma unroll
      for (int ks = 0; ks < 4; ++ks)
        ptx::mma_m16n8k16<T>(acc[nt], a[ks], b[ks >> 1][2 * (ks & 1)], b[ks >> 1][2 * (ks & 1) + 1]);
    }
  }
}

#if SPARSELLM_HAS_WGMMA
// acc += (P + R of the warpgroup's 64 rows) · the X stage at `xs`: per k32
// block j one wgmma.sp for P (this warp's slots p[j], indices meta) and one
// for R (its slots r[j], indices (2, 3)); complete on return.
template <typename T, int BN>
__device__ __forceinline__ void wgmma_split_tile(const uint32_t (&p)[2][4], const uint32_t (&r)[2][4], uint2 meta,
                                                 uint32_t xs, Accumulators<BN>& acc) {
  wgmma::fence_async_shared();
  wgmma::fence();
  const uint64_t x = wgmma::sw128_descriptor(xs);
#pragma unroll
  for (int j = 0; j < 2; ++j) wgmma::mma_sp_rs<T, BN>(acc, p[j], wgmma::advance(x, 64 * j), j ? meta.y : meta.x);
#pragma unroll
  for (int j = 0; j < 2; ++j) wgmma::mma_sp_rs<T, BN>(acc, r[j], wgmma::advance(x, 64 * j), kResidualIndices);
  wgmma::commit();
  wgmma::wait_all();
}
#endif

// Consumer: acc += (row block `warp` of the tile in `stage`) · (X tile)ᵀ.
// `staging`: the warp's staging tile, zero on entry and on return.
template <typename T, int BN>
__device__ __forceinline__ void consume(uint32_t stage, int warp, Accumulators<BN>& acc, uint32_t staging) {
  const int lane = threadIdx.x & 31;
  const uint32_t kind = ptx::ld_shared_u32(stage);
  if (kind == kDenseTile) return consume_dense<T, BN>(stage, warp, acc);  // warp-uniform
  const uint2 meta = ptx::ld_shared_v2(stage + 4 * (kIndexWord + 32 * warp + 4 * (lane >> 2) + 2 * (lane & 1)));
  uint32_t p[2][4], r[2][4];
  load_slots(stage + 4 * kSlotWord + 1024 * warp, p);
  const uint32_t starts = stage + 4 * kResidualStartWord;
  const uint32_t begin = ptx::ld_shared_u16(starts + 2 * warp);
  const uint32_t end = warp == kConsumerWarps - 1 ? kind : ptx::ld_shared_u16(starts + 2 * (warp + 1));
  // R is multiplied where the row block has entries (mma.sync), or always
  // (wgmma: at random masks nearly every warpgroup's 64 rows have some).
  const bool has_residual = kUseWgmma<BN> || end > begin;
  if (has_residual) {  // scatter R's entries (a lane keeps its first), read the slots, undo
    const uint32_t entries = stage + 4 * kResidualWord;
    const bool held = begin + lane < end;
    const uint32_t entry = held ? ptx::ld_shared_u32(entries + 4 * (begin + lane)) : 0u;
    if (held) ptx::st_shared_u16(staging + (entry >> 16), entry & 0xFFFF);
    for (uint32_t i = begin + 32 + lane; i < end; i += 32) {
      const uint32_t more = ptx::ld_shared_u32(entries + 4 * i);
      ptx::st_shared_u16(staging + (more >> 16), more & 0xFFFF);
    }
    __syncwarp();
    load_slots(staging, r);
    __syncwarp();
    if (held) ptx::st_shared_u16(staging + (entry >> 16), 0);
    for (uint32_t i = begin + 32 + lane; i < end; i += 32)
      ptx::st_shared_u16(staging + (ptx::ld_shared_u32(entries + 4 * i) >> 16), 0);
    __syncwarp();
  }
  if constexpr (kUseWgmma<BN>) {
#if SPARSELLM_HAS_WGMMA
    wgmma_split_tile<T, BN>(p, r, meta, stage + kStageTileBytes, acc);  // the warpgroup's 64 rows × BN
#endif
  } else {
    // G column blocks at a time, so that consecutive MMAs add to different
    // accumulators (one accumulator's MMAs wait for each other): 4 at 32
    // columns (2% faster than 2 at 70–90% on H200); at 64, 4 would spill.
    constexpr int G = BN == 8 ? 1 : BN == 32 ? 4 : 2;
#pragma unroll
    for (int nt = 0; nt < BN / 8; nt += G) {
      uint32_t b[G][2][4];
#pragma unroll
      for (int g = 0; g < G; ++g) load_x_fragments(stage + kStageTileBytes, nt + g, b[g]);
#pragma unroll
      for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int g = 0; g < G; ++g) ptx::mma_sp_m16n8k32<T>(acc[nt + g], p[j], b[g][j], j ? meta.y : meta.x);
      if (has_residual)
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
          for (int g = 0; g < G; ++g) ptx::mma_sp_m16n8k32<T>(acc[nt + g], r[j], b[g][j], kResidualIndices);
    }
  }
}

// At 128 columns the block is the eight consumer warps alone, which refill
// their own ring (run_block_self_fed, as the bitmap kernel's): 128 registers
// a thread for the 64 accumulators.
template <int BN>
struct Config {
  static constexpr bool kSelfFed = BN >= 128;
  static constexpr int kThreads = kSelfFed ? kConsumers : consumer_warps::kThreads;
  static constexpr int kStages = BN >= 64 ? 3 : 4;  // ring depth: two blocks a SM fit in shared memory
  static constexpr int kTileBytes = kStageTileBytes;
  static constexpr int kStageBytes = kTileBytes + kXStageBytes<BN>;
  static constexpr int kStagingOffset = kStages * kStageBytes;  // kConsumerWarps staging tiles
  static constexpr int kBarOffset = kStagingOffset + kConsumerWarps * kStagingBytes;
  static constexpr int kMetaOffset = kBarOffset + 2 * kStages * 8;  // tile words per stage
  static constexpr int kReleasedOffset = kMetaOffset + kStages * 4 + kEpilogueBytes<BN>;  // after the epilogue's bytes
  static constexpr int kSmemBytes = kReleasedOffset + (kSelfFed ? kStages * 4 : 0);  // self-fed: releases per stage
  static_assert(kSmemBytes <= 113 * 1024, "shared memory over two blocks' budget");
};

template <typename T, int BN>
__global__ void __launch_bounds__(Config<BN>::kThreads, 2) spmm_split24_kernel(const __grid_constant__ KernelArgs<T> a) {
  using C = Config<BN>;
  extern __shared__ __align__(1024) unsigned char smem[];
  const StreamKBlock blk = a.plan[blockIdx.x];
  if (blk.unit_begin == blk.unit_end) return;

  const int warp = threadIdx.x >> 5;
  const StageRing ring = stage_ring<C>(smem);
  const uint32_t staging = ring.stages + C::kStagingOffset + kStagingBytes * (warp % kConsumerWarps);
  if (threadIdx.x == 0) init_bulk_ring<C>(a, ring);
  if (warp < kConsumerWarps)
    for (int i = threadIdx.x & 31; i < kStagingBytes / 16; i += 32) ptx::st_shared_zero_v4(staging + 16 * i);
  __syncthreads();
  run_bulk_block<T, BN, C>(a, blk, ring, [&](int s, Accumulators<BN>& acc) {
    consume<T, BN>(ring.stages + s * C::kStageBytes, warp, acc, staging);
  });
}

// W as a dense row-major [m, k] matrix: block t writes tile t, warp w its row
// block w (an empty tile as zeros). Lane (g, c) of a split tile writes, per k32
// block j and A register r, the group of four its register holds — row
// 16 w + g + 8 (r % 2), group c + 4 (r / 2) of block j — with the two slots at
// their indices and zeros elsewhere; then, after __syncwarp, the residual
// entries of the row block over those zeros.
__global__ void __launch_bounds__(256) split24_to_dense_kernel(const uint32_t* __restrict__ words,
                                                              const uint32_t* __restrict__ offsets,
                                                              uint16_t* __restrict__ dense, int m, int k, int tiles_k) {
  const int t = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t r0 = int64_t(t / tiles_k) * kTileM + 16 * warp, c0 = int64_t(t % tiles_k) * kTileK;
  auto store = [&](int r, int c, uint16_t v) {  // row r of the row block, tile column c
    if (r0 + r < m && c0 + c < k) dense[(r0 + r) * k + c0 + c] = v;
  };
  const uint32_t begin = offsets[t], end = offsets[t + 1];
  const uint32_t* tile = words + begin;
  if (end == begin || tile[0] == kDenseTile) {
    const uint16_t* rows = reinterpret_cast<const uint16_t*>(tile + kDenseWord) + 16 * kTileK * warp;
    for (int x = lane; x < 16 * kTileK; x += 32) {
      const int r = x / kTileK, c = x % kTileK;
      store(r, c, end == begin ? uint16_t(0) : rows[kTileK * r + 8 * ((c / 8) ^ (r % 8)) + c % 8]);
    }
    return;
  }
  const int g = lane >> 2, c = lane & 3;
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const uint4 v = *reinterpret_cast<const uint4*>(tile + kSlotWord + 4 * (32 * (2 * warp + j) + lane));
    const uint32_t regs[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const uint32_t index = tile[kIndexWord + 32 * warp + 4 * g + 2 * (r >> 1) + j] >> (16 * (r & 1) + 4 * c) & 0xF;
      const int row = g + 8 * (r & 1), col = 32 * j + 4 * (c + 4 * (r >> 1));
      uint16_t group[4] = {0, 0, 0, 0};
      group[index & 3] = uint16_t(regs[r]);
      group[index >> 2] = uint16_t(regs[r] >> 16);
#pragma unroll
      for (int e = 0; e < 4; ++e) store(row, col + e, group[e]);
    }
  }
  __syncwarp();
  const uint16_t* starts = reinterpret_cast<const uint16_t*>(tile + kResidualStartWord);
  const uint32_t first = starts[warp], last = warp == kTileM / 16 - 1 ? tile[0] : starts[warp + 1];
  for (uint32_t x = first + lane; x < last; x += 32) {
    const uint32_t entry = tile[kResidualWord + x];
    store(residual_row(entry >> 16), residual_col(entry >> 16), uint16_t(entry));
  }
}

}  // namespace

void spmm_split24(const SpmmParams& p, cudaStream_t stream) {
  const SparseMatrixView& w = p.weight;
  SPARSELLM_CHECK_ARG(w.format == SparseFormat::kSplit24, "spmm_split24: the weight is not in the split 2:4 format");
  SPARSELLM_CHECK_ARG(reinterpret_cast<uintptr_t>(w.words) % 16 == 0,
                      "spmm: split 2:4 tile data must be 16-byte aligned");
  const DeviceInfo& device = stream_k::check_params(p);
  kernels::dispatch_dtype(w.dtype, [&](auto storage) {
    using T = decltype(storage);
    stream_k::with_block_columns(p.n, [&](auto columns) {
      constexpr int BN = decltype(columns)::value;
      stream_k::launch<T, BN, spmm_split24_kernel<T, BN>>(p, device, Config<BN>::kThreads, Config<BN>::kSmemBytes,
                                                           "spmm_split24_kernel", stream);
    });
  });
}

void spmm_split24_to_dense(const SparseMatrixView& w, void* dense, cudaStream_t stream) {
  SPARSELLM_CHECK_ARG(w.format == SparseFormat::kSplit24, "spmm_split24_to_dense: the weight is not in the split 2:4 format");
  SPARSELLM_CHECK_ARG(w.m > 0 && w.k > 0 && w.m < INT32_MAX && w.k < INT32_MAX, "spmm_split24_to_dense: invalid shape ",
                      w.m, "x", w.k);
  SPARSELLM_CHECK_ARG(w.tile_offsets && dense, "spmm_split24_to_dense: tile offsets and output must be device pointers");
  SPARSELLM_CHECK_ARG(reinterpret_cast<uintptr_t>(w.words) % 16 == 0, "spmm: split 2:4 tile data must be 16-byte aligned");
  const int64_t tiles = spmm_tile_count(w.m, w.k);
  SPARSELLM_CHECK_ARG(tiles < INT32_MAX, "spmm_split24_to_dense: too many tiles");
  // A plain launch: it waits for every kernel before it, which may still read `dense`.
  split24_to_dense_kernel<<<unsigned(tiles), 256, 0, stream>>>(w.words, w.tile_offsets, static_cast<uint16_t*>(dense),
                                                              int(w.m), int(w.k), int((w.k + kTileK - 1) / kTileK));
  SPARSELLM_CHECK_LAUNCH("split24_to_dense_kernel");
}

}  // namespace sparsellm
