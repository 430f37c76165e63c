// Tiled-CSL SpMM: Y[N, M] = X[N, K] · W[M, K]ᵀ (+ bias), W in Tiled-CSL.
//
// In MMA terms the block computes Yᵀ tiles: A = W (a 128×64 tile, expanded to
// dense in shared memory), B = Xᵀ (X's rows [n0, n0 + BN) × the tile's 64
// columns), fp32 accumulators in registers. mma.sync m16n8k16; 8 warps, warp w
// owns rows [16w, 16w + 16) of the tile and all BN columns.
//
// Per thread block (one range of a stream-K plan, sparsellm/spmm.h):
//   compressed words  global ──bulk copy (sm_90) / loads──▶ ring of kChunks × 4 KiB chunks
//   ring ──ld.shared.v4, one 16-bit st.shared per nonzero──▶ dense tile (3 buffers)
//   X tile            global ──cp.async (zero-filled past N and K)──▶ kXStages buffers
//   dense tile, X tile ──ldmatrix──▶ mma.sync ──▶ accumulators ──▶ Y or fp32 partials
//
// The ring streams the block's words as one contiguous range, cut into fixed
// chunks independent of tile boundaries, so a tile of any density (up to a full
// 8192 nonzeros) passes through the same pipeline. One __syncthreads per tile:
// a dense buffer is scattered at step t, read by the MMA at t, and zeroed at
// t + 1 (after the barrier of t + 1) for its next use at t + 3 — three buffers
// make that race-free with a single barrier.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "common/check.h"
#include "kernels/device_math.cuh"
#include "kernels/spmm/ptx.cuh"
#include "kernels/spmm/stream_k.cuh"
#include "sparsellm/device.h"
#include "sparsellm/spmm.h"
#include "sparsellm/tiled_csl.h"

namespace sparsellm {
namespace {

using namespace tiled_csl;
using stream_k::KernelArgs;
using kernels::from_float;
using kernels::to_float;
static_assert(stream_k::kTileM == kTileM && stream_k::kTileK == kTileK, "the stream-K launch assumes this tile");

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kChunkBytes = 4096;
constexpr int kChunkWords = kChunkBytes / 4;
constexpr int kDenseStages = 3;
constexpr int kDenseBytes = kTileBytes + 128;  // + the padding words' scratch row
static_assert(kWarps * 16 == kTileM, "one m16 slice per warp");

// Warp layout: kWarps = WARPS_M × WARPS_N warps tile the 128 × BN block tile;
// a warp owns WM × WN = (128 / WARPS_M) × (BN / WARPS_N). Small BN keeps every
// warp on all columns (m16 × BN); large BN splits the columns so that no warp
// re-reads the whole X tile from shared memory.
template <int BN>
struct Config {
  static constexpr int kWarpsN = BN <= 32 ? 1 : (BN == 64 ? 2 : 4);
  static constexpr int kWarpsM = kWarps / kWarpsN;
  static constexpr int kWM = kTileM / kWarpsM, kWN = BN / kWarpsN;
  static constexpr int kMT = kWM / 16, kNT = kWN / 8;  // m16 and n8 fragments per warp
  // Ring chunks: a whole tile (≤ 32 KiB, spanning ≤ 9 chunks) must fit.
  static constexpr int kChunks = 9;
  // X stages: deep for narrow X (cheap), so that first touches of X in L2 stay hidden.
  static constexpr int kXStages = BN <= 32 ? 6 : 3;
  static constexpr int kXBytes = BN * kTileK * 2;
  static constexpr int kRingOffset = 0;
  static constexpr int kDenseOffset = kRingOffset + kChunks * kChunkBytes;
  static constexpr int kXOffset = kDenseOffset + kDenseStages * kDenseBytes;
  static constexpr int kBarOffset = kXOffset + kXStages * kXBytes;
  static constexpr int kSmemBytes = kBarOffset + kChunks * 8 + 16;
  static constexpr int kXPieces = (BN * 8 + kThreads - 1) / kThreads;  // 16-byte X pieces per thread
  static_assert((kChunks - 1) * kChunkBytes >= kTileM * kTileK * 4, "ring too small for a dense tile");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory over the per-block limit");
  static_assert(kWM % 16 == 0 && kWN % 8 == 0, "warp tile must hold whole fragments");
};

template <int BN>
using Accumulators = float[Config<BN>::kMT][Config<BN>::kNT][4];

// Byte offset of (row, 16-byte chunk) in a tile of 128-byte rows whose chunks
// are XOR-swizzled by row & 7 (the layout the encoder targets).
__device__ __forceinline__ uint32_t swizzle(int row, int chunk) { return row * 128 + ((chunk ^ (row & 7)) << 4); }

// Per-thread part of the X tile load, fixed for the whole kernel: up to
// kXPieces 16-byte pieces (row r, chunk j) of the BN × 64 tile.
template <typename T, int BN>
struct XLoader {
  const T* src[Config<BN>::kXPieces];  // x row n0 + r, column 8 j (add the tile's column)
  uint32_t dst[Config<BN>::kXPieces];  // swizzled offset in the stage
  int col[Config<BN>::kXPieces];       // 8 j
  bool row_ok[Config<BN>::kXPieces];

  // Piece p of this thread: consecutive threads take consecutive 16-byte
  // pieces of a row (coalesced). Spreading pieces over all warps instead
  // measured slower (more L2 lines per request).
  static __device__ __forceinline__ int piece(int p) { return p * kThreads + threadIdx.x; }

  __device__ __forceinline__ XLoader(const KernelArgs<T>& a, int n0) {
#pragma unroll
    for (int p = 0; p < Config<BN>::kXPieces; ++p) {
      const int i = piece(p);
      const int r = i >> 3, j = i & 7;
      row_ok[p] = i < BN * 8 && n0 + r < a.n;
      src[p] = a.x + (row_ok[p] ? int64_t(n0 + r) * a.k + j * 8 : 0);
      dst[p] = swizzle(r, j);
      col[p] = j * 8;
    }
  }

  // X[n0 .., kt·64 ..] → stage; zeros past N and K.
  __device__ __forceinline__ void load(const KernelArgs<T>& a, int kt, uint32_t stage) const {
    const int c0 = kt * kTileK;
#pragma unroll
    for (int p = 0; p < Config<BN>::kXPieces; ++p) {
      if (piece(p) >= BN * 8) continue;
      const int col = c0 + this->col[p];
      if (a.x_vectors) {
        const bool valid = row_ok[p] && col < a.k;
        ptx::cp_async_16(stage + dst[p], valid ? src[p] + c0 : a.x, valid ? 16 : 0);
      } else {  // rows not 16-byte aligned: element loads
        uint32_t packed[4];
        const uint16_t* s = reinterpret_cast<const uint16_t*>(src[p] + c0);
#pragma unroll
        for (int e = 0; e < 8; e += 2) {
          const uint32_t lo = row_ok[p] && col + e < a.k ? s[e] : 0;
          const uint32_t hi = row_ok[p] && col + e + 1 < a.k ? s[e + 1] : 0;
          packed[e / 2] = lo | (hi << 16);
        }
        asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(stage + dst[p]), "r"(packed[0]),
                     "r"(packed[1]), "r"(packed[2]), "r"(packed[3]));
      }
    }
  }
};

// Per-thread ldmatrix offsets, fixed for the whole kernel. Warp rows and
// columns start at multiples of 8, so a lane's swizzle term is lane & 7.
template <int BN>
struct FragmentOffsets {
  uint32_t a_row, b_row;  // byte offset of the lane's first A / B row
  uint32_t a_chunk[kTileK / 16], b_chunk[kTileK / 16];

  __device__ __forceinline__ FragmentOffsets() {
    using C = Config<BN>;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm0 = (warp / C::kWarpsN) * C::kWM, wn0 = (warp % C::kWarpsN) * C::kWN;
    a_row = (wm0 + (lane & 7) + ((lane >> 3) & 1) * 8) * 128;
    b_row = (wn0 + (lane & 7) + (BN == 8 ? 0 : (lane >> 4) * 8)) * 128;
#pragma unroll
    for (int ks = 0; ks < kTileK / 16; ++ks) {
      a_chunk[ks] = ((2 * ks + (lane >> 4)) ^ (lane & 7)) << 4;
      b_chunk[ks] = ((2 * ks + ((lane >> 3) & 1)) ^ (lane & 7)) << 4;
    }
  }
};

// acc += (this warp's rows of the dense tile) · (its columns of the X stage)ᵀ.
template <typename T, int BN>
__device__ __forceinline__ void mma_tile(uint32_t dense, uint32_t xs, const FragmentOffsets<BN>& f,
                                         Accumulators<BN>& acc) {
  using C = Config<BN>;
#pragma unroll
  for (int ks = 0; ks < kTileK / 16; ++ks) {
    uint32_t a[C::kMT][4];
#pragma unroll
    for (int mt = 0; mt < C::kMT; ++mt) ptx::ldmatrix_x4(dense + f.a_row + mt * 2048 + f.a_chunk[ks], a[mt]);
    if constexpr (C::kNT == 1) {
      uint32_t b[2];
      ptx::ldmatrix_x2(xs + f.b_row + f.b_chunk[ks], b);
#pragma unroll
      for (int mt = 0; mt < C::kMT; ++mt) ptx::mma_m16n8k16<T>(acc[mt][0], a[mt], b[0], b[1]);
    } else {
#pragma unroll
      for (int np = 0; np < C::kNT / 2; ++np) {
        uint32_t b[4];
        ptx::ldmatrix_x4(xs + f.b_row + np * 2048 + f.b_chunk[ks], b);
#pragma unroll
        for (int mt = 0; mt < C::kMT; ++mt) {
          ptx::mma_m16n8k16<T>(acc[mt][2 * np], a[mt], b[0], b[1]);
          ptx::mma_m16n8k16<T>(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
    }
  }
}

// Y[n, m] = acc (+ bias) for this thread's fragments of tile row `row`.
template <typename T, int BN>
__device__ __forceinline__ void store_y(const KernelArgs<T>& a, int row, int n0, const Accumulators<BN>& acc) {
  using C = Config<BN>;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm0 = (warp / C::kWarpsN) * C::kWM, wn0 = (warp % C::kWarpsN) * C::kWN;
#pragma unroll
  for (int mt = 0; mt < C::kMT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = row * kTileM + wm0 + mt * 16 + (lane >> 2) + h * 8;
      if (m >= a.m) continue;
      const float b = a.bias ? to_float(a.bias[m]) : 0.0f;
#pragma unroll
      for (int nt = 0; nt < C::kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int n = n0 + wn0 + nt * 8 + (lane & 3) * 2 + e;
          if (n < a.n) a.y[int64_t(n) * a.m + m] = from_float<T>(acc[mt][nt][h * 2 + e] + b);
        }
    }
}

// A finished tile row segment (acc is cleared after): written directly when
// this block owns the whole row, else through the stream-K partials, by the
// last block to arrive.
template <typename T, int BN>
__device__ void flush_row(const KernelArgs<T>& a, const StreamKBlock& blk, int row, int first_row, int last_row,
                          int n0, Accumulators<BN>& acc, int* last_flag) {
  using C = Config<BN>;
  const bool first = row == first_row;
  const int parts = first ? blk.first_row_parts : (row == last_row ? blk.last_row_parts : 1);
  if (parts > 1) {
    constexpr int kFragments = C::kMT * C::kNT;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    auto& fragments = reinterpret_cast<float(&)[kFragments][4]>(acc);
    if (!stream_k::reduce_row<T, BN>(a, blk, row, first, warp * kFragments * 32 + lane, fragments, last_flag,
                                     [] { __syncthreads(); }))
      return;
  }
  store_y<T, BN>(a, row, n0, acc);
}

template <typename T, int BN>
__global__ void __launch_bounds__(kThreads, BN >= 128 ? 1 : 2) spmm_tiled_csl_kernel(const KernelArgs<T> a) {
  using C = Config<BN>;
  extern __shared__ __align__(128) unsigned char smem[];
  const StreamKBlock blk = a.plan[blockIdx.x];
  if (blk.unit_begin == blk.unit_end) return;

  const int tid = threadIdx.x;
  const int n0 = blockIdx.y * BN;
  const uint32_t ring = ptx::smem_addr(smem + C::kRingOffset);
  const uint32_t dense0 = ptx::smem_addr(smem + C::kDenseOffset);
  const uint32_t x0 = ptx::smem_addr(smem + C::kXOffset);
  const uint32_t bars = ptx::smem_addr(smem + C::kBarOffset);
  int* last_flag = reinterpret_cast<int*>(smem + C::kBarOffset + C::kChunks * 8);

  const uint32_t s0 = a.offsets[blk.unit_begin];
  const uint32_t stream_words = a.offsets[blk.unit_end] - s0;
  const int num_chunks = int((stream_words + kChunkWords - 1) / kChunkWords);
  const int first_row = blk.unit_begin / a.tiles_k, last_row = (blk.unit_end - 1) / a.tiles_k;

  // Chunk c of the block's stream → ring slot c % kChunks.
  auto issue_chunk = [&](int c) {
    const uint32_t first = uint32_t(c) * kChunkWords;
    const uint32_t words = min(uint32_t(kChunkWords), stream_words - first);
    const uint32_t dst = ring + (c % C::kChunks) * kChunkBytes;
#if __CUDA_ARCH__ >= 900
    const uint32_t bar = bars + (c % C::kChunks) * 8;
    ptx::mbarrier_arrive_expect_tx(bar, words * 4);
    ptx::bulk_copy_g2s(dst, a.data + s0 + first, words * 4, bar);
#else
    for (uint32_t i = tid * 4; i < words; i += kThreads * 4) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(a.data + s0 + first + i));
      asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst + i * 4), "r"(v.x), "r"(v.y),
                   "r"(v.z), "r"(v.w));
    }
#endif
  };
  // sm_90: thread 0 drives the bulk copies; earlier GPUs copy with every thread.
#if __CUDA_ARCH__ >= 900
  const bool producer = tid == 0;
#else
  const bool producer = true;
#endif

  for (int i = tid; i < kDenseStages * kDenseBytes / 16; i += kThreads) ptx::st_shared_zero_v4(dense0 + i * 16);
#if __CUDA_ARCH__ >= 900
  if (tid == 0) {
    for (int c = 0; c < C::kChunks; ++c) ptx::mbarrier_init(bars + c * 8, 1);
    ptx::fence_mbarrier_init();
  }
#endif
  __syncthreads();
  int issued = min(C::kChunks, num_chunks);
  if (producer)
    for (int c = 0; c < issued; ++c) issue_chunk(c);

  const XLoader<T, BN> x_loader(a, n0);
  const FragmentOffsets<BN> frag;
  // Tile columns of the current unit and of the unit whose X is loaded next;
  // advanced incrementally (no division in the loop).
  int kt = blk.unit_begin - first_row * a.tiles_k, row = first_row;
  int kt_x = kt;
#pragma unroll
  for (int s = 0; s < C::kXStages - 1; ++s) {
    if (blk.unit_begin + s < blk.unit_end) x_loader.load(a, kt_x, x0 + s * C::kXBytes);
    ptx::cp_async_commit();
    kt_x = kt_x + 1 == a.tiles_k ? 0 : kt_x + 1;
  }

  Accumulators<BN> acc = {};
  uint32_t w_begin = 0;  // current tile's words, relative to s0
  uint32_t w_end = a.offsets[blk.unit_begin + 1] - s0;
  int dense_stage = 0, x_stage = 0;
  int next_wait = 0, wait_slot = 0;  // next chunk to wait for, and its ring slot and phase parity
  uint32_t wait_parity = 0;
  for (int u = blk.unit_begin; u < blk.unit_end; ++u) {
    const uint32_t w_next = u + 2 <= blk.unit_end ? a.offsets[u + 2] - s0 : w_end;  // used next step
    if (tid == 0 && u + 34 <= blk.unit_end)  // keep the offsets ahead in L1: no load latency per tile
      asm volatile("prefetch.global.L1 [%0];\n" ::"l"(a.offsets + u + 34));
    const uint32_t dense = dense0 + dense_stage * kDenseBytes;

#if __CUDA_ARCH__ >= 900
    // Every thread observes each chunk's arrival once, in stream order.
    if (w_end > w_begin)
      for (const int last = int((w_end - 1) / kChunkWords); next_wait <= last; ++next_wait) {
        ptx::mbarrier_wait(bars + wait_slot * 8, wait_parity);
        if (++wait_slot == C::kChunks) {
          wait_slot = 0;
          wait_parity ^= 1;
        }
      }
#else
    __syncthreads();
#endif
    // Expand: 4 words per thread per step, one 16-bit store per word.
    for (uint32_t w = w_begin + tid * 4; w < w_end; w += kThreads * 4) {
      const uint32_t c = w / kChunkWords;
      const uint4 v = ptx::ld_shared_v4(ring + (c % C::kChunks) * kChunkBytes + (w % kChunkWords) * 4);
      ptx::st_shared_u16(dense + (v.x >> 16), v.x);
      ptx::st_shared_u16(dense + (v.y >> 16), v.y);
      ptx::st_shared_u16(dense + (v.z >> 16), v.z);
      ptx::st_shared_u16(dense + (v.w >> 16), v.w);
    }
    ptx::cp_async_wait<C::kXStages - 2>();
    __syncthreads();

    // Refill the ring: chunks wholly before the next tile are consumed.
    if (producer) {
      const int free_below = int(w_end / kChunkWords);
      for (; issued < num_chunks && issued < free_below + C::kChunks; ++issued) issue_chunk(issued);
    }
    const int x_fill = x_stage == 0 ? C::kXStages - 1 : x_stage - 1;  // the stage read at the previous step
    if (u + C::kXStages - 1 < blk.unit_end) x_loader.load(a, kt_x, x0 + x_fill * C::kXBytes);
    ptx::cp_async_commit();
    kt_x = kt_x + 1 == a.tiles_k ? 0 : kt_x + 1;
    {  // zero the dense buffer read at the previous step; it is scattered again two steps on
      const int stale_stage = dense_stage == 0 ? kDenseStages - 1 : dense_stage - 1;
      const uint32_t stale = dense0 + stale_stage * kDenseBytes;
#pragma unroll
      for (int i = 0; i < kTileBytes / 16 / kThreads; ++i) ptx::st_shared_zero_v4(stale + (tid + i * kThreads) * 16);
    }
    if (w_end > w_begin) mma_tile<T, BN>(dense, x0 + x_stage * C::kXBytes, frag, acc);

    if (kt + 1 == a.tiles_k || u + 1 == blk.unit_end) {
      flush_row<T, BN>(a, blk, row, first_row, last_row, n0, acc, last_flag);
#pragma unroll
      for (int mt = 0; mt < C::kMT; ++mt)
#pragma unroll
        for (int nt = 0; nt < C::kNT; ++nt) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.0f;
      kt = 0;
      ++row;
    } else {
      ++kt;
    }
    w_begin = w_end;
    w_end = w_next;
    dense_stage = dense_stage + 1 == kDenseStages ? 0 : dense_stage + 1;
    x_stage = x_stage + 1 == C::kXStages ? 0 : x_stage + 1;
  }
}

}  // namespace

size_t spmm_workspace_bytes(int64_t m, int64_t n, int blocks) {
  const int bn = stream_k::block_columns(n);
  const int64_t passes = (n + bn - 1) / bn;
  return stream_k::kCounterBytes + size_t(passes) * 2 * size_t(blocks) * kTileM * bn * sizeof(float);
}

void spmm_tiled_csl(const SpmmParams& p, cudaStream_t stream) {
  const int device = stream_k::check_params(p).id;
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
