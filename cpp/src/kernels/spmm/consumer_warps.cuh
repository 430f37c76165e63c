// What the two warp-specialized SpMM kernels (Tiled-CSL and bitmap) share.
//
// A block runs 8 consumer warps and 2 producer warps over the tiles of one
// stream-K range (sparsellm/spmm.h). Consumer warp w owns row block w of every
// 128 × 64 tile — rows [16 w, 16 w + 16) — times all BN columns of its X
// pass: per k16 step it multiplies one 16 × 16 A fragment of W (however the
// format decodes it) by the X tile's B fragments (ldmatrix) into fp32
// accumulators acc[BN / 8][4] (mma.m16n8k16). Producer warp p brings the
// block's tiles i ≡ p (mod 2): the format's data, and X[n0 .. n0 + BN,
// 64 kt .. 64 kt + 64] into a stage of BN rows of 128 bytes whose 16-byte
// chunks are XOR-swizzled by row & 7 (zero-filled past N and K): on sm_90,
// where X's rows are 16-byte aligned, one tensor copy (TMA, the map's 128-byte
// swizzle), else 16-byte cp.async pieces. The stage's full barrier takes lane
// 0's arrival after it wrote the stage's metadata, plus the X tile's: lane 0's
// with the tensor copy's bytes, or all 32 lanes' once their pieces land. Two
// producers because one producer's turn per tile, a chain of ~200 dependent
// instructions, bounded the kernels at 80–90 % sparsity and at wide N
// (docs/kernel-notes.md, "v7"). A block may also run without producer warps
// (run_block_self_fed): its consumers then refill the ring themselves.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/device_math.cuh"
#include "kernels/spmm/norm_fold.cuh"
#include "kernels/spmm/ptx.cuh"
#include "kernels/spmm/stream_k.cuh"
#include "kernels/spmm/wgmma.cuh"

namespace sparsellm::consumer_warps {

using stream_k::kConsumerWarps;  // one per 16-row block
constexpr int kConsumers = kConsumerWarps * 32;
constexpr int kProducerWarps = 2;
constexpr int kThreads = kConsumers + 32 * kProducerWarps;
constexpr int kConsumerBarrier = 1;        // named barrier of the consumer warps
constexpr int kXFullArrivals = 32 + 1;     // producer lanes' copies + lane 0's metadata
constexpr int kXFullArrivalsTma = 1 + 1;   // lane 0's X tensor copy + its metadata

template <int BN>
using Accumulators = float[BN / 8][4];

// X stage: BN rows of 128 bytes.
template <int BN>
constexpr int kXStageBytes = BN * stream_k::kTileK * 2;

__device__ __forceinline__ void consumer_sync() {
  asm volatile("bar.sync %0, %1;\n" ::"n"(kConsumerBarrier), "n"(kConsumers) : "memory");
}

// Producer warp: the ends of the block's tiles — tile j (counted from the
// block's first tile `first`) ends at offsets[first + j + 1] — 32 at a time.
// advance(u) makes tile u's batch of 32 current (one coalesced load when it
// changes); tiles are visited in increasing order, fewer than 32 apart, so the
// batch before stays at hand for end_of().
struct TileEnds {
  uint32_t batch = 0, previous = 0;
  int held = -1;  // index of the batch in `batch`
  __device__ __forceinline__ void advance(const uint32_t* offsets, int u, int first, int end) {
    const int b = (u - first) >> 5;
    if (b != held) {
      const int v = first + 32 * b + (threadIdx.x & 31);
      previous = batch;
      batch = v < end ? offsets[v + 1] : 0u;
      held = b;
    }
  }
  // The end of block tile j, for j in the current batch or the one before.
  __device__ __forceinline__ uint32_t end_of(int j) const {
    return __shfl_sync(0xFFFFFFFFu, (j >> 5) == held ? batch : previous, j & 31);
  }
  // The start of block tile j: `first` (the block's first word) for j = 0, else the end of tile j − 1.
  __device__ __forceinline__ uint32_t begin_of(int j, uint32_t first) const { return j == 0 ? first : end_of(j - 1); }
};

// Whether this block brings X by TMA: the host's choice (a.x_tma, on devices of
// compute capability 9.0 and up) where this code is compiled for sm_90 or later,
// so that the barrier count and the copies agree even in a build without sm_90
// code run on such a device.
template <typename T>
__device__ __forceinline__ bool x_by_tma(const stream_k::KernelArgs<T>& a) {
#if __CUDA_ARCH__ >= 900
  return a.x_tma;
#else
  return false;
#endif
}

// Producer warp: X[n0 .., 64 kt ..] → the stage at `xs` (1024-byte aligned).
// With x_by_tma(a) lane 0 arrives on `full` with the tile's bytes and
// starts one tensor copy (the second of kXFullArrivalsTma arrivals); else every
// lane arrives when its cp.async pieces have landed (32 of kXFullArrivals).
template <typename T, int BN>
__device__ __forceinline__ void load_x_tile(const stream_k::KernelArgs<T>& a, int kt, int n0, uint32_t xs,
                                            uint32_t full) {
  static_assert(BN * 8 % 32 == 0, "X pieces split evenly over the producer warp");
  const int lane = threadIdx.x & 31;
  const int c0 = kt * stream_k::kTileK;
#if __CUDA_ARCH__ >= 900
  if (x_by_tma(a)) {
    if (lane == 0) {
      ptx::mbarrier_arrive_expect_tx(full, uint32_t(kXStageBytes<BN>));
      ptx::tensor_copy_2d_g2s(xs, &a.x_map, c0, n0, full);
    }
    return;
  }
#endif
#pragma unroll 4
  for (int p = 0; p < BN * 8 / 32; ++p) {  // 16-byte piece i: row r, chunk j at r · 128 + ((j ^ (r & 7)) << 4)
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
      ptx::st_shared_v4(dst, packed);
    }
  }
  if (a.x_vectors) {
    ptx::mbarrier_arrive_cp_async(full);
  } else {
#if __CUDA_ARCH__ < 900
    ptx::cp_async_wait<0>();  // the format's cp.async pieces this stage may also wait for
#endif
    ptx::mbarrier_arrive(full);  // release: orders this lane's stores before the arrival
  }
}

// Producer warp, for a format whose tile is one run of words (bitmap, split
// 2:4): the tile's words [w0, w1) into `stage` (a bulk copy on sm_90, cp.async
// pieces before); lane 0 records the word count at `meta` and arrives on
// `full` (with the bulk bytes as its transaction count on sm_90).
template <typename T>
__device__ __forceinline__ void produce_bulk_tile(const stream_k::KernelArgs<T>& a, uint32_t w0, uint32_t w1,
                                                  uint32_t stage, uint32_t full, uint32_t meta) {
  const int lane = threadIdx.x & 31;
  const uint32_t words = w1 - w0;
  if (lane == 0) ptx::st_shared_u32(meta, words);
#if __CUDA_ARCH__ >= 900
  if (lane == 0) {
    if (words > 0) {
      ptx::mbarrier_arrive_expect_tx(full, words * 4);
      ptx::bulk_copy_g2s(stage, a.data + w0, words * 4, full);
    } else {
      ptx::mbarrier_arrive(full);
    }
  }
#else
  for (uint32_t v = lane; v < words / 4; v += 32) ptx::cp_async_16(stage + v * 16, a.data + w0 + v * 4, 16);
  if (lane == 0) ptx::mbarrier_arrive(full);
#endif
}

// ldmatrix rows of 128 bytes whose 16-byte chunk j sits at j ^ (row & 7)
// (X stages, Tiled-CSL's dense tile): a lane reads chunk 2 ks + h (h = 0, 1)
// of its row at k16 step ks, at chunk (2 ks + h) ^ (row & 7) = (h ^ (row &
// 7)) ^ 2 ks. From a 128-byte aligned row the address of step ks is therefore
// step 0's with bits 5–6 flipped by ks: one XOR a step.
__device__ __forceinline__ uint32_t swizzled_k16_step(uint32_t step0, int ks) { return step0 ^ (ks << 5); }

// The lane's ldmatrix address of the B fragments of k16 step 0 in the X stage
// at xs (1024-byte aligned): its row (n) and its swizzled chunk.
template <int BN>
__device__ __forceinline__ uint32_t x_fragment_step0(uint32_t xs) {
  const int lane = threadIdx.x & 31;
  const uint32_t b_row = ((lane & 7) + (BN == 8 ? 0 : (lane >> 4) * 8)) * 128;
  return xs + b_row + ((((lane >> 3) & 1) ^ (lane & 7)) << 4);
}

// acc += A (this lane's registers of one 16 × 16 fragment of k16 step ks) ·
// the X stage's columns [16 ks, 16 ks + 16)ᵀ, whose fragments the lane reads
// at xb = swizzled_k16_step(x_fragment_step0<BN>(stage), ks).
template <typename T, int BN>
__device__ __forceinline__ void mma_k16(const uint32_t (&a)[4], uint32_t xb, Accumulators<BN>& acc) {
  if constexpr (BN == 8) {
    uint32_t b[2];
    ptx::ldmatrix_x2(xb, b);
    ptx::mma_m16n8k16<T>(acc[0], a, b[0], b[1]);
  } else {
#pragma unroll
    for (int np = 0; np < BN / 16; ++np) {
      uint32_t b[4];
      ptx::ldmatrix_x4(xb + np * 2048, b);
      ptx::mma_m16n8k16<T>(acc[2 * np], a, b[0], b[1]);
      ptx::mma_m16n8k16<T>(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// Widths multiplied by wgmma on sm_90a (mma.sync otherwise): from 32 columns,
// where the warpgroup's one read of the X tile beats eight warps' ldmatrix;
// at 16 the mma.sync path is faster (kernel-notes: "The Tiled-CSL consumers'
// chain").
// SPARSELLM_WGMMA_MIN_COLUMNS moves the threshold (any of 8 … 128) for
// measurements of the two paths against each other.
#ifndef SPARSELLM_WGMMA_MIN_COLUMNS
#define SPARSELLM_WGMMA_MIN_COLUMNS 32
#endif
template <int BN>
constexpr bool kWgmmaColumns = BN >= SPARSELLM_WGMMA_MIN_COLUMNS;
// Whether this compilation multiplies BN columns by wgmma (sm_90a and a wgmma
// width); mma.sync otherwise.
template <int BN>
constexpr bool kUseWgmma = SPARSELLM_HAS_WGMMA && kWgmmaColumns<BN>;

// Every X stage is 1024-byte aligned: the 128-byte swizzle that TMA writes
// and wgmma reads is taken from address bits, so a stage off that alignment
// would be misread, silently. Traps where the first one is not.
__device__ __forceinline__ void check_x_alignment(uint32_t first_x_stage) {
  if (first_x_stage % 1024 != 0) __trap();
}
using stream_k::x_aligned;  // kernels/spmm/x_tensor_map.h

#if SPARSELLM_HAS_WGMMA
// acc += A (this warp's four k16 fragments of the tile, mma.m16n8k16 A
// registers) · the X stage's 64 columns: one wgmma per k16 step for the
// warpgroup's 64 rows, complete on return (wgmma.cuh).
template <typename T, int BN>
__device__ __forceinline__ void wgmma_tile(const uint32_t (&a)[4][4], uint32_t xs, Accumulators<BN>& acc) {
  wgmma::fence_async_shared();
  wgmma::fence();
  const uint64_t b = wgmma::sw128_descriptor(xs);
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) wgmma::mma_rs<T, BN>(acc, a[ks], wgmma::advance(b, 32 * ks));
  wgmma::commit();
  wgmma::wait_all();
}
#endif

// Shared memory after a block's stage metadata: its last-block flag (16
// bytes), then the norm fold's scratch (norm_fold.cuh) where it has one.
template <int BN>
constexpr int kEpilogueBytes = 16 + norm_fold::kScratchBytes<BN>;
__device__ __forceinline__ float* epilogue_scratch(int* last_flag) { return reinterpret_cast<float*>(last_flag + 4); }

// Y[n, m] = acc (+ bias), then max(·, 0) where asked, for this consumer
// thread's fragments of tile row `row` (every consumer thread of the block
// calls it); with a norm fold (norm_fold.cuh) acc is first scaled by s[n]
// (in part), and Y is added to the residual it holds (out part).
// Every global load (bias, γ, the residual) is issued before the first store,
// and kept raw until used: to the compiler a store to y may alias any of them,
// so a load after a store (or after a use of an earlier load) would wait a
// round trip to L2.
template <typename T, int BN>
__device__ __forceinline__ void store_y(const stream_k::KernelArgs<T>& a, int row, int n0,
                                        const Accumulators<BN>& acc, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const bool scales = norm_fold::scales<BN>(a), updates_residual = norm_fold::updates_residual<BN>(a);
  const int m0 = row * stream_k::kTileM + warp * 16 + (lane >> 2);  // rows m0 + 8h, h = 0, 1
  T bias[2] = {}, gamma[2] = {};
  T residual[2][BN / 8][2] = {};  // out part: h[n, m] before the update
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int m = m0 + h * 8;
    if (m >= a.m) continue;
    if (a.bias) bias[h] = a.bias[m];
    if constexpr (norm_fold::kFolds<BN>)
      if (updates_residual) {
        gamma[h] = a.norm_gamma[m];
#pragma unroll
        for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int n = n0 + nt * 8 + (lane & 3) * 2 + e;
            if (n < a.n) residual[h][nt][e] = a.y[int64_t(n) * a.m + m];
          }
      }
  }
  float sq[BN / 8][2] = {};  // out part: Σ h² over this thread's rows, per column
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int m = m0 + h * 8;
    if (m >= a.m) continue;
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = nt * 8 + (lane & 3) * 2 + e, n = n0 + c;
        const float v =
            (scales ? acc[nt][h * 2 + e] * scratch[c] : acc[nt][h * 2 + e]) + kernels::to_float(bias[h]);
        if (n >= a.n) continue;
        if constexpr (norm_fold::kFolds<BN>)
          if (updates_residual) {
            const float r =
                kernels::round_to<T>(kernels::to_float(residual[h][nt][e]) + (a.relu ? fmaxf(v, 0.0f) : v));
            a.y[int64_t(n) * a.m + m] = kernels::from_float<T>(r);
            sq[nt][e] += r * r;
            a.norm_normed[int64_t(n) * a.m + m] = kernels::from_float<T>(r * kernels::to_float(gamma[h]));
            continue;
          }
        a.y[int64_t(n) * a.m + m] = kernels::from_float<T>(a.relu ? fmaxf(v, 0.0f) : v);
      }
  }
  if (updates_residual) norm_fold::store_sumsq<BN>(a, row, n0, sq, scratch, [] { consumer_sync(); });
}

// A finished tile row segment (consumer threads only), then acc cleared:
// written directly when this block owns the whole row, else through the
// stream-K partials, by the block that sums them (stream_k.cuh: reduce_row).
template <typename T, int BN>
__device__ void flush_row(const stream_k::KernelArgs<T>& a, const StreamKBlock& blk, int row, int first_row,
                          int last_row, int n0, Accumulators<BN>& acc, int* last_flag) {
  const bool first = row == first_row;
  const int parts = first ? blk.first_row_parts : (row == last_row ? blk.last_row_parts : 1);
  bool store = true;
  if (parts > 1) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    store = stream_k::reduce_row<T, BN>(a, blk, row, first, warp * (BN / 8) * 32 + lane, acc, last_flag,
                                        [] { consumer_sync(); });
  }
  if (store) store_y<T, BN>(a, row, n0, acc, epilogue_scratch(last_flag));
#pragma unroll
  for (int nt = 0; nt < BN / 8; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
}

// A block's view of its shared memory, laid out by the format's Config C:
// kStages stages of kStageBytes from the start (1024-byte aligned: checked),
// the stage barriers at kBarOffset, the stages' tile word counts at
// kMetaOffset and the epilogue's bytes after them (kEpilogueBytes).
struct StageRing {
  uint32_t stages, bars;          // shared addresses
  const volatile uint32_t* meta;  // [kStages] words of the tile in each stage
  int* last_flag;
};
template <typename C>
__device__ __forceinline__ StageRing stage_ring(unsigned char* smem) {
  StageRing r;
  r.stages = ptx::smem_addr(smem);
  check_x_alignment(r.stages);  // every stage size is a multiple of 1024
  r.bars = ptx::smem_addr(smem + C::kBarOffset);
  r.meta = reinterpret_cast<const volatile uint32_t*>(smem + C::kMetaOffset);
  r.last_flag = reinterpret_cast<int*>(smem + C::kMetaOffset + C::kStages * 4);
  return r;
}

// Stage s of kStages (X tile + the format's per-tile data) has two barriers:
// full(s) at bars + 8 s (kXFullArrivals, or kXFullArrivalsTma where X comes by
// TMA) and empty(s) at bars + 8 (kStages + s) (one arrival per consumer warp).
// Thread 0 initializes them (and, on sm_90, makes the initialization visible
// to the bulk copies' async proxy).
template <int kStages, typename T>
__device__ __forceinline__ void init_stage_barriers(const stream_k::KernelArgs<T>& a, uint32_t bars) {
  for (int s = 0; s < kStages; ++s) {
    ptx::mbarrier_init(bars + 8 * s, x_by_tma(a) ? kXFullArrivalsTma : kXFullArrivals);
    ptx::mbarrier_init(bars + 8 * (kStages + s), kConsumerWarps);
  }
#if __CUDA_ARCH__ >= 900
  ptx::fence_mbarrier_init();
#endif
}

// The consumer warps' loop over the block's range: wait full(s), consume(u,
// s, acc), release(u, s) once the warp is done with stage s; a finished tile
// row (or the range's end) is flushed.
template <typename T, int BN, int kStages, typename Consume, typename Release>
__device__ __forceinline__ void consume_range(const stream_k::KernelArgs<T>& a, const StreamKBlock& blk,
                                              uint32_t bars, int* last_flag, Consume consume, Release release) {
  const int n0 = blockIdx.y * BN;
  const int first_row = blk.unit_begin / a.tiles_k, last_row = (blk.unit_end - 1) / a.tiles_k;
  int kt = blk.unit_begin - first_row * a.tiles_k;
  norm_fold::prologue<BN>(a, epilogue_scratch(last_flag), [] { consumer_sync(); });
  Accumulators<BN> acc = {};
  for (int u = blk.unit_begin, i = 0, row = first_row; u < blk.unit_end; ++u, ++i) {
    const int s = i % kStages;
    ptx::mbarrier_wait(bars + 8 * s, uint32_t((i / kStages) & 1));
    consume(u, s, acc);
    __syncwarp();
    release(u, s);
    if (kt + 1 == a.tiles_k || u + 1 == blk.unit_end) {
      flush_row<T, BN>(a, blk, row, first_row, last_row, n0, acc, last_flag);
      kt = 0;
      ++row;
    } else {
      ++kt;
    }
  }
}

// The block's loops over its stream-K range [blk.unit_begin, blk.unit_end).
//   producer warp p: for tile u, the i-th of the block, i ≡ p (mod
//                    kProducerWarps), into stage s = i mod kStages, once the
//                    consumers released s: produce(u, s) — the format's data,
//                    lane 0 arriving once on full(s) after writing what the
//                    consumers read from the stage's metadata — then the X tile.
//                    The format's data of tiles i < kEarlyTiles is requested
//                    before the wait for the previous kernel (weights depend on
//                    none); a format whose produce() may wait for a release
//                    (Tiled-CSL's byte ring) keeps kEarlyTiles = kProducerWarps.
//   consumer warps:  wait full(s), consume(u, s, acc), release s; a finished
//                    tile row (or the range's end) is flushed.
// x_stage(s) is the shared address of stage s's X tile. The phase parities
// stay unambiguous because a producer reaches tile i only after tile
// i − kStages was released, and the consumers release tiles in order.
template <typename T, int BN, int kStages, int kEarlyTiles, typename XStage, typename Produce, typename Consume>
__device__ __forceinline__ void run_block(const stream_k::KernelArgs<T>& a, const StreamKBlock& blk, uint32_t bars,
                                          int* last_flag, XStage x_stage, Produce produce, Consume consume) {
  static_assert(kProducerWarps <= kStages, "a producer waits for the release of the tile kStages before its own");
  static_assert(kProducerWarps <= kEarlyTiles && kEarlyTiles <= kStages, "early tiles fill the ring at most");
  // Chained launch (kernels/launch.h): the next kernel of the step may be scheduled now; it waits for
  // this grid to finish before it reads Y. Without this its launch would start only when the grid ends.
  kernels::allow_dependent_launch();
  const int n0 = blockIdx.y * BN;
  const int warp = __shfl_sync(0xFFFFFFFFu, int(threadIdx.x >> 5), 0);  // warp-uniform for the compiler
  if (warp >= kConsumerWarps) {
    const int p = warp - kConsumerWarps;
    for (int u = blk.unit_begin + p, i = p; u < blk.unit_end && i < kEarlyTiles; u += kProducerWarps, i += kProducerWarps)
      produce(u, i);
    kernels::wait_for_prerequisite_grids();  // X is the previous kernel's output
    int kt = (blk.unit_begin + p) % a.tiles_k;
    for (int u = blk.unit_begin + p, i = p; u < blk.unit_end; u += kProducerWarps, i += kProducerWarps) {
      const int s = i % kStages;
      if (i >= kEarlyTiles) {
        if (i >= kStages) ptx::mbarrier_wait(bars + 8 * (kStages + s), uint32_t((i / kStages - 1) & 1));
        produce(u, s);
      }
      load_x_tile<T, BN>(a, kt, n0, x_stage(s), bars + 8 * s);
      for (kt += kProducerWarps; kt >= a.tiles_k;) kt -= a.tiles_k;
    }
    ptx::cp_async_wait<0>();
    return;
  }
  kernels::wait_for_prerequisite_grids();  // before the workspace and Y
  consume_range<T, BN, kStages>(a, blk, bars, last_flag, consume, [&](int, int s) {
    if ((threadIdx.x & 31) == 0) ptx::mbarrier_arrive(bars + 8 * (kStages + s));
  });
}

// run_block for a block of consumer warps only (kConsumers threads): they
// fill the ring themselves, so that two blocks of 8 warps a SM keep 128
// registers a thread (kernel-notes: "Consumers that fill their own ring").
// Warp 0 brings the first kStages tiles (the format's data before the wait for
// the previous kernel, X after). Afterwards the warp whose release of stage s
// is the tile's last (counted in released[s], an acquire-release add on shared
// memory; no warp ever waits for a release) brings tile i + kStages into s:
// produce(u, s), then the X tile. ahead(u) is called by every warp, in order,
// for every tile it may produce, before produce(u, ·) and well before, so that
// a format's lookahead loads (the bitmap's TileEnds) are in flight meanwhile.
template <typename T, int BN, int kStages, typename XStage, typename Ahead, typename Produce, typename Consume>
__device__ __forceinline__ void run_block_self_fed(const stream_k::KernelArgs<T>& a, const StreamKBlock& blk,
                                                   uint32_t bars, uint32_t released, int* last_flag, XStage x_stage,
                                                   Ahead ahead, Produce produce, Consume consume) {
  kernels::allow_dependent_launch();  // as in run_block
  const int n0 = blockIdx.y * BN;
  const int warp = __shfl_sync(0xFFFFFFFFu, int(threadIdx.x >> 5), 0);
  const int filled = min(kStages, blk.unit_end - blk.unit_begin);
  if (warp == 0)
    for (int i = 0; i < filled; ++i) {
      ahead(blk.unit_begin + i);
      produce(blk.unit_begin + i, i);
    }
  kernels::wait_for_prerequisite_grids();  // X, the workspace and Y
  if (warp == 0)
    for (int i = 0; i < filled; ++i) load_x_tile<T, BN>(a, (blk.unit_begin + i) % a.tiles_k, n0, x_stage(i), bars + 8 * i);
  consume_range<T, BN, kStages>(
      a, blk, bars, last_flag,
      [&](int u, int s, Accumulators<BN>& acc) {
        if (u + kStages < blk.unit_end) ahead(u + kStages);
        consume(u, s, acc);
      },
      [&](int u, int s) {
        uint32_t before = 0;
        if ((threadIdx.x & 31) == 0) before = ptx::atom_inc_acq_rel_shared(released + 4 * s);
        before = __shfl_sync(0xFFFFFFFFu, before, 0);
        const int next = u + kStages;
        if (before % kConsumerWarps == kConsumerWarps - 1 && next < blk.unit_end) {
          produce(next, s);
          load_x_tile<T, BN>(a, next % a.tiles_k, n0, x_stage(s), bars + 8 * s);
        }
      });
}

// A block whose stages hold whole tiles copied in bulk (bitmap, split 2:4),
// laid out by its Config C: stage s at s · kStageBytes holds kTileBytes of the
// tile's words, then the X tile; self-fed (kSelfFed) blocks keep their release
// counts at kReleasedOffset. Thread 0 initializes the ring (init_bulk_ring);
// run_bulk_block runs the block, consume_stage(s, acc) for every tile with words.
template <typename C, typename T>
__device__ __forceinline__ void init_bulk_ring(const stream_k::KernelArgs<T>& a, const StageRing& ring) {
  init_stage_barriers<C::kStages>(a, ring.bars);
  if constexpr (C::kSelfFed)
    for (int s = 0; s < C::kStages; ++s) ptx::st_shared_u32(ring.stages + C::kReleasedOffset + 4 * s, 0);
}
template <typename T, int BN, typename C, typename ConsumeStage>
__device__ __forceinline__ void run_bulk_block(const stream_k::KernelArgs<T>& a, const StreamKBlock& blk,
                                               const StageRing& ring, ConsumeStage consume_stage) {
  const uint32_t stages = ring.stages, bars = ring.bars;
  const uint32_t first_word = a.offsets[blk.unit_begin];
  TileEnds ends;  // producer warps; self-fed every warp, which may refill any stage
  auto advance = [&](int u) { ends.advance(a.offsets, u, blk.unit_begin, blk.unit_end); };
  auto x_stage = [&](int s) { return stages + s * C::kStageBytes + C::kTileBytes; };
  auto produce = [&](int u, int s) {  // after advance(u)
    const int j = u - blk.unit_begin;
    produce_bulk_tile<T>(a, ends.begin_of(j, first_word), ends.end_of(j), stages + s * C::kStageBytes, bars + 8 * s,
                         stages + C::kMetaOffset + 4 * s);
  };
  auto consume = [&](int, int s, Accumulators<BN>& acc) {
    if (ring.meta[s] > 0) consume_stage(s, acc);
  };
  if constexpr (C::kSelfFed)
    run_block_self_fed<T, BN, C::kStages>(a, blk, bars, stages + C::kReleasedOffset, ring.last_flag, x_stage, advance,
                                          produce, consume);
  else
    run_block<T, BN, C::kStages, C::kStages>(
        a, blk, bars, ring.last_flag, x_stage,
        [&](int u, int s) {
          advance(u);
          produce(u, s);
        },
        consume);
}

}  // namespace sparsellm::consumer_warps
