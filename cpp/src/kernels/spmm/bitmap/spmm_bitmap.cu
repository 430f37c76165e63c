// Bitmap SpMM: Y[N, M] = X[N, K] · W[M, K]ᵀ (+ bias), W in the bitmap format
// (sparsellm/bitmap.h).
//
// In MMA terms the block computes Yᵀ tiles: A = W (one 16 × 16 block per
// mma.m16n8k16, decoded straight from shared memory into the lane's A
// registers), B = Xᵀ (X rows [n0, n0 + BN) × the tile's 64 columns, ldmatrix),
// fp32 accumulators in registers. Nothing dense is ever written to shared
// memory and nothing is zeroed.
//
// Warp specialization, 9 warps:
//   warp 8 (producer)   for each tile of the block's stream-K range, into ring stage s:
//                         lane 0: bulk copy (sm_90; cp.async pieces before) of the tile
//                         all lanes: X[n0 .., 64 c ..] by cp.async (zero-filled past N, K)
//                         → full[s] completes when every byte has landed
//   warps 0..7 (consumers) warp w owns the tile's row block w (rows 16 w ..) × all BN
//                         columns; wait full[s], decode + MMA, arrive on empty[s]
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
//
// Stream-K (sparsellm/spmm.h): the same plan and workspace as Tiled-CSL (same
// tile grid, offsets in words). A tile row shared by several blocks is summed
// in block order through fp32 partials by whichever block arrives last.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/check.h"
#include "kernels/device_math.cuh"
#include "kernels/spmm/ptx.cuh"
#include "kernels/spmm/stream_k.cuh"
#include "sparsellm/bitmap.h"
#include "sparsellm/device.h"
#include "sparsellm/spmm.h"

namespace sparsellm {
namespace {

using namespace bitmap;
using stream_k::KernelArgs;
using kernels::from_float;
using kernels::to_float;
static_assert(stream_k::kTileM == kTileM && stream_k::kTileK == kTileK, "the stream-K launch assumes this tile");

constexpr int kConsumerWarps = kBlocksM;  // one per row block
constexpr int kConsumers = kConsumerWarps * 32;
constexpr int kThreads = kConsumers + 32;  // + the producer warp
constexpr int kConsumerBarrier = 1;        // named barrier of the consumer warps
// Shared bytes a stage reserves for a tile: the largest tile, rounded to 128
// bytes. Decode reads at most one 16-bit value past a tile's last value, which
// stays inside the reservation (kMaxTileWords · 4 = 17,424 < 17,536).
constexpr int kStageTileBytes = (kMaxTileWords * 4 + 127) / 128 * 128;

template <int BN>
struct Config {
  static constexpr int kNT = BN / 8;                    // n8 fragments per warp
  static constexpr int kStages = BN >= 128 ? 3 : 4;     // ring depth (2 blocks per SM)
  static constexpr int kXBytes = BN * kTileK * 2;       // X tile: BN rows of 128 bytes
  static constexpr int kStageBytes = kStageTileBytes + kXBytes;
  static constexpr int kBarOffset = kStages * kStageBytes;  // full[kStages], empty[kStages]
  static constexpr int kMetaOffset = kBarOffset + 2 * kStages * 8;  // tile words per stage
  static constexpr int kSmemBytes = kMetaOffset + kStages * 4 + 16;
  static constexpr int kXPieces = BN * 8 / 32;          // 16-byte X pieces per producer lane
  static_assert(kSmemBytes <= 113 * 1024, "two blocks per SM must fit");
  static_assert(BN * 8 % 32 == 0, "X pieces split evenly over the producer warp");
};

// mbarrier pieces this kernel needs beyond ptx.cuh, for sm_80 and sm_90.
__device__ __forceinline__ void bar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void bar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Arrives on `bar` once this thread's earlier cp.async copies have landed.
__device__ __forceinline__ void bar_arrive_cp_async(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared.b64 [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void bar_wait(uint32_t bar, uint32_t parity) {
#if __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "wait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
#else
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "wait_%=:\n"
      "mbarrier.test_wait.parity.shared.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
#endif
}
__device__ __forceinline__ void consumer_sync() {
  asm volatile("bar.sync %0, %1;\n" ::"n"(kConsumerBarrier), "n"(kConsumers) : "memory");
}
__device__ __forceinline__ uint4 lds128(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
  return v;
}

template <int BN>
using Accumulators = float[Config<BN>::kNT][4];

// Producer: tile u (its words) and the X tile of tile column kt into stage s;
// full[s] completes when both have landed (1 + 32 arrivals, + the bulk bytes).
template <typename T, int BN>
__device__ __forceinline__ void produce(const KernelArgs<T>& a, int u, int kt, int n0, uint32_t stage, uint32_t full,
                                        uint32_t meta) {
  using C = Config<BN>;
  const int lane = threadIdx.x & 31;
  const uint32_t w0 = a.offsets[u], words = a.offsets[u + 1] - w0;
  if (lane == 0) asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(meta), "r"(words) : "memory");
#if __CUDA_ARCH__ >= 900
  if (lane == 0) {
    if (words > 0) {
      ptx::mbarrier_arrive_expect_tx(full, words * 4);
      ptx::bulk_copy_g2s(stage, a.data + w0, words * 4, full);
    } else {
      bar_arrive(full);
    }
  }
#else
  for (uint32_t v = lane; v < words / 4; v += 32) ptx::cp_async_16(stage + v * 16, a.data + w0 + v * 4, 16);
  if (lane == 0) bar_arrive(full);
#endif
  // X tile: row r, 16-byte chunk j at r · 128 + ((j ^ (r & 7)) << 4).
  const uint32_t xs = stage + kStageTileBytes;
  const int c0 = kt * kTileK;
#pragma unroll 4
  for (int p = 0; p < C::kXPieces; ++p) {
    const int i = p * 32 + lane, r = i >> 3, j = i & 7;
    const int col = c0 + 8 * j;
    const bool row_ok = n0 + r < a.n;
    const uint32_t dst = xs + r * 128 + ((j ^ (r & 7)) << 4);
    const T* src = a.x + (row_ok ? int64_t(n0 + r) * a.k + col : 0);
    if (a.x_vectors) {
      const bool valid = row_ok && col < a.k;
      ptx::cp_async_16(dst, valid ? src : a.x, valid ? 16 : 0);
    } else {  // rows not 16-byte aligned: element loads
      const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
      uint32_t packed[4];
#pragma unroll
      for (int e = 0; e < 8; e += 2) {
        const uint32_t lo = row_ok && col + e < a.k ? s[e] : 0;
        const uint32_t hi = row_ok && col + e + 1 < a.k ? s[e + 1] : 0;
        packed[e / 2] = lo | (hi << 16);
      }
      asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst), "r"(packed[0]), "r"(packed[1]),
                   "r"(packed[2]), "r"(packed[3]));
    }
  }
  if (a.x_vectors) {
    bar_arrive_cp_async(full);
  } else {
#if __CUDA_ARCH__ < 900
    ptx::cp_async_wait<0>();  // the tile's cp.async pieces
#endif
    bar_arrive(full);  // release: orders this lane's stores before the arrival
  }
}

// Consumer: acc += (row block `warp` of the tile in `stage`) · (X tile)ᵀ.
template <typename T, int BN>
__device__ __forceinline__ void consume(const unsigned char* stage_ptr, uint32_t stage, int warp,
                                        Accumulators<BN>& acc) {
  using C = Config<BN>;
  const int lane = threadIdx.x & 31;
  const int shift = 8 * (lane & 3);
  const uint32_t below = (1u << shift) - 1;  // mask bits of lower lanes of the quad
  // Masks: word q = lane >> 2 of the row block's four blocks.
  const uint4 mw4 = lds128(stage + 128 * warp + 16 * (lane >> 2));
  const uint32_t mw[4] = {mw4.x, mw4.y, mw4.z, mw4.w};
  uint32_t row_start;
  asm volatile("ld.shared.u16 %0, [%1];\n" : "=r"(row_start) : "r"(stage + kMaskWords * 4 + 2 * warp));

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
  const uint32_t b_row = ((lane & 7) + (BN == 8 ? 0 : (lane >> 4) * 8)) * 128;
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
    uint32_t a[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const uint32_t lo = byte >> (2 * r) & 1 ? uint32_t(pair[r][0]) : 0u;
      const uint32_t hi = byte >> (2 * r + 1) & 1 ? uint32_t(pair[r + 1][-1]) : 0u;
      a[r] = __byte_perm(lo, hi, 0x5410);
    }
    // B fragments (ldmatrix) and the MMAs.
    const uint32_t b_chunk = ((2 * j + ((lane >> 3) & 1)) ^ (lane & 7)) << 4;
    if constexpr (C::kNT == 1) {
      uint32_t b[2];
      ptx::ldmatrix_x2(xs + b_row + b_chunk, b);
      ptx::mma_m16n8k16<T>(acc[0], a, b[0], b[1]);
    } else {
#pragma unroll
      for (int np = 0; np < C::kNT / 2; ++np) {
        uint32_t b[4];
        ptx::ldmatrix_x4(xs + b_row + np * 2048 + b_chunk, b);
        ptx::mma_m16n8k16<T>(acc[2 * np], a, b[0], b[1]);
        ptx::mma_m16n8k16<T>(acc[2 * np + 1], a, b[2], b[3]);
      }
    }
  }
}

// Y[n, m] = acc (+ bias) for this consumer thread's fragments of tile row `row`.
template <typename T, int BN>
__device__ __forceinline__ void store_y(const KernelArgs<T>& a, int row, int n0, const Accumulators<BN>& acc) {
  using C = Config<BN>;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int m = row * kTileM + warp * 16 + (lane >> 2) + h * 8;
    if (m >= a.m) continue;
    const float b = a.bias ? to_float(a.bias[m]) : 0.0f;
#pragma unroll
    for (int nt = 0; nt < C::kNT; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int n = n0 + nt * 8 + (lane & 3) * 2 + e;
        if (n < a.n) a.y[int64_t(n) * a.m + m] = from_float<T>(acc[nt][h * 2 + e] + b);
      }
  }
}

// A finished tile row segment (consumer threads only; acc is cleared after):
// written directly when this block owns the whole row, else through the
// stream-K partials, by the last block to arrive.
template <typename T, int BN>
__device__ void flush_row(const KernelArgs<T>& a, const StreamKBlock& blk, int row, int first_row, int last_row,
                          int n0, Accumulators<BN>& acc, int* last_flag) {
  using C = Config<BN>;
  const bool first = row == first_row;
  const int parts = first ? blk.first_row_parts : (row == last_row ? blk.last_row_parts : 1);
  if (parts > 1) {
    constexpr int kFragments = C::kNT;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    auto& fragments = reinterpret_cast<float(&)[kFragments][4]>(acc);
    if (!stream_k::reduce_row<T, BN>(a, blk, row, first, warp * kFragments * 32 + lane, fragments, last_flag,
                                     [] { consumer_sync(); }))
      return;
  }
  store_y<T, BN>(a, row, n0, acc);
}

template <typename T, int BN>
__global__ void __launch_bounds__(kThreads, 2) spmm_bitmap_kernel(const KernelArgs<T> a) {
  using C = Config<BN>;
  extern __shared__ __align__(128) unsigned char smem[];
  const StreamKBlock blk = a.plan[blockIdx.x];
  if (blk.unit_begin == blk.unit_end) return;

  const int warp = threadIdx.x >> 5;
  const int n0 = blockIdx.y * BN;
  const uint32_t stages = ptx::smem_addr(smem);
  const uint32_t bars = ptx::smem_addr(smem + C::kBarOffset);  // full[s] at 8 s, empty[s] at 8 (kStages + s)
  const volatile uint32_t* meta = reinterpret_cast<const volatile uint32_t*>(smem + C::kMetaOffset);
  int* last_flag = reinterpret_cast<int*>(smem + C::kMetaOffset + C::kStages * 4);
  const int first_row = blk.unit_begin / a.tiles_k, last_row = (blk.unit_end - 1) / a.tiles_k;

  if (threadIdx.x == 0) {
    for (int s = 0; s < C::kStages; ++s) {
      bar_init(bars + 8 * s, 1 + 32);                       // producer lane 0 + every producer lane's copies
      bar_init(bars + 8 * (C::kStages + s), kConsumerWarps);  // one arrival per consumer warp
    }
#if __CUDA_ARCH__ >= 900
    ptx::fence_mbarrier_init();
#endif
  }
  __syncthreads();

  if (warp == kConsumerWarps) {  // producer
    int kt = blk.unit_begin - first_row * a.tiles_k;
    for (int u = blk.unit_begin, i = 0; u < blk.unit_end; ++u, ++i) {
      const int s = i % C::kStages;
      if (i >= C::kStages) bar_wait(bars + 8 * (C::kStages + s), uint32_t((i / C::kStages - 1) & 1));
      produce<T, BN>(a, u, kt, n0, stages + s * C::kStageBytes, bars + 8 * s, stages + C::kMetaOffset + 4 * s);
      kt = kt + 1 == a.tiles_k ? 0 : kt + 1;
    }
    ptx::cp_async_wait<0>();
    return;
  }

  Accumulators<BN> acc = {};
  int kt = blk.unit_begin - first_row * a.tiles_k, row = first_row;
  for (int u = blk.unit_begin, i = 0; u < blk.unit_end; ++u, ++i) {
    const int s = i % C::kStages;
    bar_wait(bars + 8 * s, uint32_t((i / C::kStages) & 1));
    if (meta[s] > 0) consume<T, BN>(smem + s * C::kStageBytes, stages + s * C::kStageBytes, warp, acc);
    __syncwarp();
    if ((threadIdx.x & 31) == 0) bar_arrive(bars + 8 * (C::kStages + s));

    if (kt + 1 == a.tiles_k || u + 1 == blk.unit_end) {
      flush_row<T, BN>(a, blk, row, first_row, last_row, n0, acc, last_flag);
#pragma unroll
      for (int nt = 0; nt < C::kNT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
      kt = 0;
      ++row;
    } else {
      ++kt;
    }
  }
}

}  // namespace

void spmm_bitmap(const SpmmParams& p, cudaStream_t stream) {
  const SparseMatrixView& w = p.weight;
  SPARSELLM_CHECK_ARG(w.format == SparseFormat::kBitmap, "spmm_bitmap: the weight is not in the bitmap format");
  SPARSELLM_CHECK_ARG(reinterpret_cast<uintptr_t>(w.words) % 16 == 0,
                      "spmm: bitmap tile data must be 16-byte aligned");
  const int device = stream_k::check_params(p).id;
  kernels::dispatch_dtype(w.dtype, [&](auto storage) {
    using T = decltype(storage);
    stream_k::with_block_columns(p.n, [&](auto columns) {
      constexpr int BN = decltype(columns)::value;
      stream_k::launch<T, BN, spmm_bitmap_kernel<T, BN>>(p, device, kThreads, Config<BN>::kSmemBytes, "spmm_bitmap_kernel",
                                                         stream);
    });
  });
}

void spmm(const SpmmParams& p, cudaStream_t stream) {
  if (p.weight.format == SparseFormat::kBitmap)
    spmm_bitmap(p, stream);
  else
    spmm_tiled_csl(p, stream);
}

}  // namespace sparsellm
