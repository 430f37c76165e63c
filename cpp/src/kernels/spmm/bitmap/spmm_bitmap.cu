// Bitmap SpMM: Y[N, M] = X[N, K] · W[M, K]ᵀ (+ bias), W in the bitmap format
// (sparsellm/bitmap.h).
//
// In MMA terms the block computes Yᵀ tiles: A = W (one 16 × 16 block per
// mma.m16n8k16, decoded straight from shared memory into the lane's A
// registers), B = Xᵀ (X rows [n0, n0 + BN) × the tile's 64 columns, ldmatrix),
// fp32 accumulators in registers. Nothing dense is ever written to shared
// memory and nothing is zeroed.
//
// Warp specialization, 10 warps:
//   warps 8, 9          alternate tiles of the block's stream-K range, into ring stage s:
//   (producers)
//                         lane 0: bulk copy (sm_90; cp.async pieces before) of the tile
//                         X[n0 .., 64 c ..] (zero-filled past N, K): lane 0's tensor
//                         copy (TMA, sm_90), or every lane's cp.async pieces
//                         → full[s] completes when every byte has landed
//   warps 0..7 (consumers) warp w owns the tile's row block w (rows 16 w ..) × all BN
//                         columns; wait full[s], decode + MMA, arrive on empty[s]
// At BN = 128 the block is the 8 consumer warps alone: the warp that releases
// stage s last brings the tile kStages later into it, as a producer would
// (Config, consumer_warps.cuh: run_block_self_fed).
//
// Decode of row block w (per lane l, quad q = l >> 2):
//   one 16-byte load: word q of the four blocks' masks (mw[j], j = 0..3)
//   lane's byte of block j: (mw[j] >> 8 (l & 3)) & 0xFF; its first value is
//   row_start[w] + Σ_{j' < j} popc(block j') + (quad prefix of popc(mw[j])) +
//   popc(mw[j] & bits below the lane's byte). The quad prefix of two blocks at
//   once (16-bit fields) takes 3 shuffles; block totals one more.
//   then per A register r (slots 2r, 2r + 1): the values before it,
//   q_r = popc(byte & (4^r − 1)), and two predicated 16-bit shared loads at
//   q_r and q_{r+1} − 1 — no branch, no scatter, no dense tile.
// MMA: mma.m16n8k16 per block and 8 columns; for BN ≥ 32 on sm_90a, once
//   the row block's four fragments are decoded, wgmma.m64nBNk16 per block
//   with the fragments as A registers (each warpgroup: 64 rows; wgmma.cuh).
//
// Stream-K (sparsellm/spmm.h): the same plan and workspace as Tiled-CSL (same
// tile grid, offsets in words). A tile row shared by several blocks is summed
// in block order through fp32 partials by whichever block arrives last.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/check.h"
#include "kernels/spmm/consumer_warps.cuh"
#include "kernels/spmm/ptx.cuh"
#include "kernels/spmm/stream_k.cuh"
#include "sparsellm/bitmap.h"
#include "sparsellm/device.h"
#include "sparsellm/spmm.h"

namespace sparsellm {
namespace {

using namespace bitmap;
using stream_k::KernelArgs;
using namespace consumer_warps;
static_assert(stream_k::kTileM == kTileM && stream_k::kTileK == kTileK, "the stream-K launch assumes this tile");

// Shared bytes a stage reserves for a tile: the largest tile, rounded to 1024
// bytes so that the X tile after it is 1024-byte aligned (check_x_alignment).
// Decode reads at most one 16-bit value past a tile's last value, which stays
// inside the reservation (kMaxTileWords · 4 = 17,424 < 18,432).
constexpr int kStageTileBytes = x_aligned(kMaxTileWords * 4);

// Consumer: acc += (row block `warp` of the tile in `stage`) · (X tile)ᵀ.
template <typename T, int BN>
__device__ __forceinline__ void consume(const unsigned char* stage_ptr, uint32_t stage, int warp,
                                        Accumulators<BN>& acc) {
  const int lane = threadIdx.x & 31;
  const int shift = 8 * (lane & 3);
  const uint32_t below = (1u << shift) - 1;  // mask bits of lower lanes of the quad
  // Masks: word q = lane >> 2 of the row block's four blocks.
  const uint4 mw4 = ptx::ld_shared_v4(stage + 128 * warp + 16 * (lane >> 2));
  const uint32_t mw[4] = {mw4.x, mw4.y, mw4.z, mw4.w};
  const uint32_t row_start = ptx::ld_shared_u16(stage + kMaskWords * 4 + 2 * warp);

  // Quad prefix sums of the blocks' popcounts, two blocks per 32-bit word.
  uint32_t scan[2], count[2], total[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    count[h] = __popc(mw[2 * h]) | (__popc(mw[2 * h + 1]) << 16);
    uint32_t s = count[h];
#pragma unroll
    for (int d = 4; d < 32; d *= 2) {
      const uint32_t t = __shfl_up_sync(0xFFFFFFFFu, s, d);
      if (lane >= d) s += t;
    }
    total[h] = __shfl_sync(0xFFFFFFFFu, s, 31);
    scan[h] = s - count[h];
  }
  // Value index (in halves) of the lane's first value in each block.
  uint32_t first[4];
  first[0] = row_start + (scan[0] & 0xFFFF);
  first[1] = row_start + (total[0] & 0xFFFF) + (scan[0] >> 16);
  first[2] = row_start + (total[0] & 0xFFFF) + (total[0] >> 16) + (scan[1] & 0xFFFF);
  first[3] = row_start + (total[0] & 0xFFFF) + (total[0] >> 16) + (total[1] & 0xFFFF) + (scan[1] >> 16);

  const unsigned short* values = reinterpret_cast<const unsigned short*>(stage_ptr + kHeaderWords * 4);
  const uint32_t xs = stage + kStageTileBytes;
  uint32_t a[kBlocksK][4];
#pragma unroll
  for (int j = 0; j < kBlocksK; ++j) {
    // A fragment of block (warp, j): slot e = bit e of the lane's byte. With
    // q_r = popc(byte & (4^r − 1)) the values before pair r, slot 2r (if set)
    // is value q_r and slot 2r + 1 (if set) value q_{r+1} − 1: one popcount
    // per register pair, then predicated 16-bit loads at fixed offsets.
    const uint32_t byte = (mw[j] >> shift) & 0xFF;
    const unsigned short* p = values + first[j] + __popc(mw[j] & below);
    const unsigned short* pair[5] = {p, p + __popc(byte & 0x3), p + __popc(byte & 0xF), p + __popc(byte & 0x3F),
                                     p + __popc(byte)};
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const uint32_t lo = byte >> (2 * r) & 1 ? uint32_t(pair[r][0]) : 0u;
      const uint32_t hi = byte >> (2 * r + 1) & 1 ? uint32_t(pair[r + 1][-1]) : 0u;
      a[j][r] = __byte_perm(lo, hi, 0x5410);
    }
    if constexpr (!kUseWgmma<BN>) mma_k16<T, BN>(a[j], swizzled_k16_step(x_fragment_step0<BN>(xs), j), acc);
  }
#if SPARSELLM_HAS_WGMMA
  if constexpr (kUseWgmma<BN>) wgmma_tile<T, BN>(a, xs, acc);  // the warpgroup's 64 rows × BN
#endif
}

// BN = 128 runs blocks of the 8 consumer warps alone, which fill their own
// ring (consumer_warps.cuh: run_block_self_fed): two such blocks a SM get 128
// registers a thread, enough for the wgmma accumulators of 128 columns without
// ptxas serializing them (C7512 at the 96 of two 10-warp blocks), and four
// consumer warps a scheduler instead of two (kernel-notes: "Consumers that fill
// their own ring").
template <int BN>
struct Config {
  static constexpr bool kSelfFed = BN >= 128;
  static constexpr int kThreads = kSelfFed ? kConsumers : consumer_warps::kThreads;
  static constexpr int kBlocksPerSm = 2;
  static constexpr int kStages = kSelfFed ? 3 : 4;  // ring depth
  static constexpr int kTileBytes = kStageTileBytes;
  static constexpr int kStageBytes = kTileBytes + kXStageBytes<BN>;
  static constexpr int kBarOffset = kStages * kStageBytes;          // stage barriers (consumer_warps.cuh)
  static constexpr int kMetaOffset = kBarOffset + 2 * kStages * 8;  // tile words per stage
  static constexpr int kReleasedOffset = kMetaOffset + kStages * 4 + kEpilogueBytes<BN>;  // after the epilogue's bytes
  static constexpr int kSmemBytes = kReleasedOffset + (kSelfFed ? kStages * 4 : 0);
  static_assert(kSmemBytes <= 113 * 1024, "shared memory over two blocks' budget");
};

template <typename T, int BN>
__global__ void __launch_bounds__(Config<BN>::kThreads, Config<BN>::kBlocksPerSm) spmm_bitmap_kernel(const __grid_constant__ KernelArgs<T> a) {
  using C = Config<BN>;
  extern __shared__ __align__(1024) unsigned char smem[];
  const StreamKBlock blk = a.plan[blockIdx.x];
  if (blk.unit_begin == blk.unit_end) return;

  const int warp = threadIdx.x >> 5;
  const StageRing ring = stage_ring<C>(smem);
  if (threadIdx.x == 0) init_bulk_ring<C>(a, ring);
  __syncthreads();
  run_bulk_block<T, BN, C>(a, blk, ring, [&](int s, Accumulators<BN>& acc) {
    consume<T, BN>(smem + s * C::kStageBytes, ring.stages + s * C::kStageBytes, warp, acc);
  });
}

}  // namespace

void spmm_bitmap(const SpmmParams& p, cudaStream_t stream) {
  const SparseMatrixView& w = p.weight;
  SPARSELLM_CHECK_ARG(w.format == SparseFormat::kBitmap, "spmm_bitmap: the weight is not in the bitmap format");
  SPARSELLM_CHECK_ARG(reinterpret_cast<uintptr_t>(w.words) % 16 == 0,
                      "spmm: bitmap tile data must be 16-byte aligned");
  const DeviceInfo& device = stream_k::check_params(p);
  kernels::dispatch_dtype(w.dtype, [&](auto storage) {
    using T = decltype(storage);
    stream_k::with_block_columns(p.n, [&](auto columns) {
      constexpr int BN = decltype(columns)::value;
      stream_k::launch<T, BN, spmm_bitmap_kernel<T, BN>>(p, device, Config<BN>::kThreads, Config<BN>::kSmemBytes, "spmm_bitmap_kernel",
                                                         stream);
    });
  });
}

void spmm(const SpmmParams& p, cudaStream_t stream) {
  switch (p.weight.format) {
    case SparseFormat::kBitmap: return spmm_bitmap(p, stream);
    case SparseFormat::kSplit24: return spmm_split24(p, stream);
    default: return spmm_tiled_csl(p, stream);
  }
}

}  // namespace sparsellm
