// Tiled-CSL SpMM: Y[N, M] = X[N, K] · W[M, K]ᵀ (+ bias), W in Tiled-CSL
// (sparsellm/tiled_csl.h, version 2: a tile's words grouped by 16-row block).
//
// In MMA terms the block computes Yᵀ tiles: A = W (a 128 × 64 tile expanded to
// dense in shared memory, one 16-bit store per nonzero), B = Xᵀ (X rows
// [n0, n0 + BN) × the tile's 64 columns), fp32 accumulators, mma.m16n8k16.
//
// Warp specialization, 10 warps (consumer_warps.cuh):
//   warps 8, 9          alternate tiles; per tile: one bulk copy (two where it wraps) of the
//   (producers)
//                       tile's words into a 64 KiB ring of words — a byte
//                       ring, so a sparse tile takes only its own bytes and
//                       many tiles are in flight — once the tiles it
//                       overwrites are consumed; then the tile's X stage.
//                       The tile's stage barrier covers words, X and the
//                       tile's end (stage metadata).
//   warps 0..7          warp w expands only its own row-block group: 16-byte
//   (consumers)         loads, one shift and one 16-bit store per word into
//                       rows [16 w, 16 w + 16) of the dense tile
//                       (bank-conflict free by the encoder's word order);
//                       __syncwarp; ldmatrix + mma over the 4 k16 steps;
//                       __syncwarp; zeroes what it wrote (the words it
//                       still holds, at BN ≤ 32 and ≤ 2 vectors a lane) or
//                       else its 2 KiB of the dense tile.
// No block-wide barrier per tile: a warp only waits for bytes and for itself.
//
// Cost per tile and consumer lane: ⌈words / 128⌉ vector loads and
// words / 32 × (shift + store) for the expansion, 4 ldmatrix + BN / 8 × 4 mma,
// words / 32 (held) or 4 (16-byte) zeroing stores, and the waits and
// bookkeeping — per nonzero, not per element, so the time falls with the
// density until the bytes bound it.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/check.h"
#include "kernels/spmm/consumer_warps.cuh"
#include "kernels/spmm/ptx.cuh"
#include "kernels/spmm/stream_k.cuh"
#include "sparsellm/device.h"
#include "sparsellm/spmm.h"
#include "sparsellm/tiled_csl.h"

namespace sparsellm {
namespace {

using namespace tiled_csl;
using namespace consumer_warps;
using stream_k::KernelArgs;
static_assert(stream_k::kTileM == kTileM && stream_k::kTileK == kTileK, "the stream-K launch assumes this tile");
static_assert(kGroups == kConsumerWarps, "one row-block group per consumer warp");

constexpr uint32_t kRingWords = 16384;  // 64 KiB
static_assert((kRingWords & (kRingWords - 1)) == 0 && kRingWords >= kMaxTileWords, "a whole tile must fit");
constexpr int kDenseBytes = kTileBytes + 128;  // + the padding words' scratch row

// Vectors of words a consumer lane holds through the MMA to undo its scatter
// (2: groups of ≤ 256 words, every group from ≈ 75% sparsity). Wider blocks
// have no registers to spare at two blocks a SM (BN = 64 sits at 96).
template <int BN>
constexpr int kHeldVectors = BN <= 32 ? 2 : 0;

template <int BN>
struct Config {
  static constexpr int kStages = BN <= 16 ? 8 : (BN == 32 ? 6 : 3);  // X stages (tiles in flight)
  static constexpr int kDenseOffset = kRingWords * 4;  // 1024-byte aligned, as X stages (swizzled_k16_step)
  static constexpr int kXOffset = x_aligned(kDenseOffset + kDenseBytes);  // check_x_alignment
  static constexpr int kBarOffset = kXOffset + kStages * kXStageBytes<BN>;  // stage barriers
  static constexpr int kMetaOffset = kBarOffset + 2 * kStages * 8;         // tile word end per stage
  static constexpr int kSmemBytes = kMetaOffset + kStages * 4 + kEpilogueBytes<BN>;
  static constexpr int kBlocksPerSm = BN >= 128 ? 1 : 2;
  static_assert(kSmemBytes <= (kBlocksPerSm == 2 ? 113 : 227) * 1024, "shared memory over budget");
  static_assert(kDenseOffset % 1024 == 0, "the dense tile's rows are stepped by XOR from 128-byte aligned starts");
};

__device__ __forceinline__ uint32_t lds_u16(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.u16 %0, [%1];\n" : "=r"(v) : "r"(addr));
  return v;
}

// Shared address of word w (counted from the block's first word) in the ring.
__device__ __forceinline__ uint32_t ring_word(uint32_t ring, uint32_t w) { return ring + (w & (kRingWords - 1)) * 4; }

// Producer warp: words [begin, end) of the block's stream (starting at global
// word s0) into the ring, completing on `full`: on sm_90 lane 0 arrives with
// the byte count; before, every lane's cp.async pieces land before its
// arrival with the X copies.
template <typename T>
__device__ __forceinline__ void copy_tile(const KernelArgs<T>& a, uint32_t ring, uint32_t s0, uint32_t begin,
                                          uint32_t end, uint32_t full) {
  const uint32_t first = begin & (kRingWords - 1);
  const uint32_t head = min(end - begin, kRingWords - first);  // words before the ring wraps
#if __CUDA_ARCH__ >= 900
  if ((threadIdx.x & 31) == 0) {
    ptx::mbarrier_arrive_expect_tx(full, (end - begin) * 4);
    ptx::bulk_copy_g2s(ring + first * 4, a.data + s0 + begin, head * 4, full);
    if (end - begin > head) ptx::bulk_copy_g2s(ring, a.data + s0 + begin + head, (end - begin - head) * 4, full);
  }
#else
  for (uint32_t w = begin + 4 * (threadIdx.x & 31); w < end; w += 128)
    ptx::cp_async_16(ring_word(ring, w), a.data + s0 + w, 16);
#endif
}

// The start of the lane's ldmatrix row in its warp's rows [16 w, 16 w + 16) of
// the dense tile: 128-byte rows, chunk j of row i at j ^ (i & 7).
__device__ __forceinline__ uint32_t dense_row(uint32_t dense) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  return dense + (16 * warp + (lane & 7) + ((lane >> 3) & 1) * 8) * 128;
}

// A consumer lane's ldmatrix addresses of k16 step 0 (swizzled_k16_step
// steps them): in the dense tile (dense_row) and relative to an X stage. At
// mma.sync widths (not kUseWgmma) they are set once and kept in registers
// (ptxas would otherwise recompute them for every tile: 1–2% at 90%); at
// wgmma widths keeping them made 128 columns 1–2.5% slower at 50–70%, so
// there the tile computes its rows itself.
struct LaneAddresses {
  uint32_t a_step0, x_offset;
};
template <int BN>
__device__ __forceinline__ LaneAddresses lane_addresses(uint32_t dense) {
  if constexpr (kUseWgmma<BN>) return {};
  const int lane = threadIdx.x & 31;
  return {ptx::opaque(dense_row(dense) + (((lane >> 4) ^ (lane & 7)) << 4)), ptx::opaque(x_fragment_step0<BN>(0))};
}

// Consumer warp w, one non-empty tile whose words start at word tb of the block's stream.
template <typename T, int BN>
__device__ __forceinline__ void consume_tile(uint32_t ring, uint32_t dense, uint32_t xs, uint32_t tb,
                                             const LaneAddresses& la, Accumulators<BN>& acc) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  // Header: group_end[8] (uint16, in words after the header). Group w: [begin, end).
  const uint32_t header = ring_word(ring, tb);
  const uint32_t begin = warp == 0 ? 0 : lds_u16(header + 2 * (warp - 1));
  const uint32_t end = lds_u16(header + 2 * warp);
  auto scatter = [&](const uint4& v) {
    ptx::st_shared_u16(dense + (v.x >> 16), v.x);
    ptx::st_shared_u16(dense + (v.y >> 16), v.y);
    ptx::st_shared_u16(dense + (v.z >> 16), v.z);
    ptx::st_shared_u16(dense + (v.w >> 16), v.w);
  };
  __syncwarp();  // the previous tile's zeroing, by every lane, is done
  // A group of at most kHeldVectors vectors a lane keeps its words in registers
  // through the MMA and then zeroes only the positions it wrote (4 stores a
  // vector instead of 16 wavefronts clearing 2 KiB); any other clears its rows.
  constexpr int kHeld = kHeldVectors<BN>;
  const bool held = end - begin <= 128u * kHeld;  // warp-uniform
  uint4 v[kHeld > 0 ? kHeld : 1];
  const uint32_t first = begin + 4 * lane;  // the lane's first word of the group
  auto in_group = [&](int h) { return first + 128 * h < end; };  // held vector h has words
  if (held) {
#pragma unroll
    for (int h = 0; h < kHeld; ++h)
      if (in_group(h)) v[h] = ptx::ld_shared_v4(ring_word(ring, tb + kHeaderWords + first + 128 * h));
#pragma unroll
    for (int h = 0; h < kHeld; ++h)
      if (in_group(h)) scatter(v[h]);
  } else {
    uint32_t i = first;
    for (; i + 128 < end; i += 256) {  // two vectors in flight per lane
      const uint4 v0 = ptx::ld_shared_v4(ring_word(ring, tb + kHeaderWords + i));
      const uint4 v1 = ptx::ld_shared_v4(ring_word(ring, tb + kHeaderWords + i + 128));
      scatter(v0);
      scatter(v1);
    }
    if (i < end) scatter(ptx::ld_shared_v4(ring_word(ring, tb + kHeaderWords + i)));
  }
  __syncwarp();

  uint32_t a[kTileK / 16][4];
  if constexpr (!kUseWgmma<BN>) {
    const uint32_t x_step0 = xs + la.x_offset;
#pragma unroll
    for (int ks = 0; ks < kTileK / 16; ++ks) {
      ptx::ldmatrix_x4(swizzled_k16_step(la.a_step0, ks), a[ks]);
      mma_k16<T, BN>(a[ks], swizzled_k16_step(x_step0, ks), acc);
    }
  } else {
    const uint32_t a_row = dense_row(dense);
#pragma unroll
    for (int ks = 0; ks < kTileK / 16; ++ks)
      ptx::ldmatrix_x4(a_row + (((2 * ks + (lane >> 4)) ^ (lane & 7)) << 4), a[ks]);
#if SPARSELLM_HAS_WGMMA
    wgmma_tile<T, BN>(a, xs, acc);  // the warpgroup's 64 rows × BN
#endif
  }
  __syncwarp();  // every lane's ldmatrix has read the rows
  if (held) {
#pragma unroll
    for (int h = 0; h < kHeld; ++h)
      if (in_group(h)) scatter(make_uint4(v[h].x & 0xFFFF0000u, v[h].y & 0xFFFF0000u, v[h].z & 0xFFFF0000u,
                                                v[h].w & 0xFFFF0000u));  // value 0, same position
  } else {
    const uint32_t mine = dense + 2048 * warp + 16 * lane;
#pragma unroll
    for (int z = 0; z < 4; ++z) ptx::st_shared_zero_v4(mine + 512 * z);
  }
}

template <typename T, int BN>
__global__ void __launch_bounds__(kThreads, Config<BN>::kBlocksPerSm) spmm_tiled_csl_kernel(const __grid_constant__ KernelArgs<T> a) {
  using C = Config<BN>;
  extern __shared__ __align__(1024) unsigned char smem[];
  const StreamKBlock blk = a.plan[blockIdx.x];
  if (blk.unit_begin == blk.unit_end) return;

  const uint32_t ring = ptx::smem_addr(smem);
  const uint32_t dense = ptx::smem_addr(smem + C::kDenseOffset);
  const uint32_t x0 = ptx::smem_addr(smem + C::kXOffset);
  check_x_alignment(x0);
  const uint32_t bars = ptx::smem_addr(smem + C::kBarOffset);
  const uint32_t meta = ptx::smem_addr(smem + C::kMetaOffset);
  const volatile uint32_t* tile_ends = reinterpret_cast<const volatile uint32_t*>(smem + C::kMetaOffset);
  int* last_flag = reinterpret_cast<int*>(smem + C::kMetaOffset + C::kStages * 4);

  for (int i = threadIdx.x; i < kDenseBytes / 16; i += kThreads) ptx::st_shared_zero_v4(dense + i * 16);
  if (threadIdx.x == 0) {
    init_stage_barriers<C::kStages>(a, bars);
  }
  __syncthreads();

  // Words are counted from the block's first word s0; a tile's ring space is
  // free once every tile that began more than kRingWords words before its end
  // is consumed (their stages' empty barriers).
  const uint32_t s0 = a.offsets[blk.unit_begin];
  TileEnds ends;            // producers
  int freed = 0;            // producers: tiles before it are known consumed
  uint32_t tile_begin = 0;  // consumers: the current tile's first word
  const LaneAddresses la = lane_addresses<BN>(dense);  // consumers
  run_block<T, BN, C::kStages, kProducerWarps>(
      a, blk, bars, last_flag, [&](int s) { return x0 + s * kXStageBytes<BN>; },
      [&](int u, int s) {
        const int i = u - blk.unit_begin;
        ends.advance(a.offsets, u, blk.unit_begin, blk.unit_end);
        const uint32_t begin = ends.begin_of(i, s0) - s0, tile_end = ends.end_of(i) - s0;
        freed = max(freed, i - C::kStages + 1);  // run_block waited for tile i − kStages
        for (; freed < i && ends.begin_of(freed, s0) - s0 + kRingWords < tile_end; ++freed)
          ptx::mbarrier_wait(bars + 8 * (C::kStages + freed % C::kStages), uint32_t((freed / C::kStages) & 1));
        if ((threadIdx.x & 31) == 0) ptx::st_shared_u32(meta + 4 * s, tile_end);
        if (tile_end > begin) copy_tile(a, ring, s0, begin, tile_end, bars + 8 * s);
#if __CUDA_ARCH__ >= 900
        const bool arrived = tile_end > begin;  // lane 0's arrival carried the byte count
#else
        const bool arrived = false;
#endif
        if ((threadIdx.x & 31) == 0 && !arrived) ptx::mbarrier_arrive(bars + 8 * s);
      },
      [&](int, int s, Accumulators<BN>& acc) {
        const uint32_t tile_end = tile_ends[s];
        if (tile_end > tile_begin)
          consume_tile<T, BN>(ring, dense, x0 + s * kXStageBytes<BN>, tile_begin, la, acc);
        tile_begin = tile_end;
      });
}

}  // namespace

size_t spmm_workspace_scratch_offset() { return stream_k::kCounterBytes + stream_k::kFencelessZoneBytes; }

size_t spmm_workspace_bytes(int64_t m, int64_t n, int blocks) {
  const int bn = stream_k::block_columns(n);
  const int64_t passes = (n + bn - 1) / bn;
  return spmm_workspace_scratch_offset() + size_t(passes) * 2 * size_t(blocks) * kTileM * bn * sizeof(float);
}

void spmm_tiled_csl(const SpmmParams& p, cudaStream_t stream) {
  const DeviceInfo& device = stream_k::check_params(p);
  SPARSELLM_CHECK_ARG(reinterpret_cast<uintptr_t>(p.weight.words) % 16 == 0,
                      "spmm: Tiled-CSL words must be 16-byte aligned");
  kernels::dispatch_dtype(p.weight.dtype, [&](auto storage) {
    using T = decltype(storage);
    stream_k::with_block_columns(p.n, [&](auto columns) {
      constexpr int BN = decltype(columns)::value;
      stream_k::launch<T, BN, spmm_tiled_csl_kernel<T, BN>>(p, device, kThreads, Config<BN>::kSmemBytes,
                                                            "spmm_tiled_csl_kernel", stream);
    });
  });
}

}  // namespace sparsellm
