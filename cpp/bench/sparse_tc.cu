// sparse_tc OUTDIR: an experiment — unstructured sparsity on the sparse tensor
// cores (mma.sp, 2:4), against the bitmap kernel and cuBLAS.
//
// W[M, K] is split as W = P + R. In every group of 4 consecutive elements of a
// row (k = 4 g .. 4 g + 3), P keeps the first two nonzeros and R the rest (a
// group of 3 or 4 nonzeros: 2.7% of groups at 80% sparsity, 8.4% at 70%).
// P is 2:4 sparse: per 16 × 32 block, mma.m16n8k32's sparse A operand is a
// 16 × 16 matrix of "slots" (two per group) plus 2-bit indices. The slots are
// stored like the bitmap format's 16 × 16 blocks (a 256-bit slot mask in
// A-fragment order, the occupied slots' values packed), so the bitmap decode
// fills the sparse A registers unchanged — but one decoded 16 × 16 fragment
// now covers 16 × 32 weights: half the decode work a weight. The indices are
// stored as the registers mma.sp reads (selector 0: lanes 0 and 1 of a quad).
// R is a list of (row, column, value) per row block, scattered into a 16 × 64
// staging tile per warp and multiplied densely (mma.m16n8k16).
//
// Tile (128 × 64, the bitmap grid, so the same stream-K plan), 32-bit words:
//   [0, 128)    slot masks: word 16 i + 2 q + j = bits [32 q, 32 q + 32) of row
//               block i, k32 block j
//   [128, 384)  indices: word 128 + 32 i + 4 g + 2 p + j = lane (g, p)'s mma.sp
//               metadata for row block i, k32 block j
//   [384, 388)  uint16 value_start[8]   [388, 392) uint16 residual_start[8]
//   392         residual base word      393 residual count      [394, 396) 0
//   then the values (16-bit, padded to a word), then the residual entries
//   (value | staging offset << 16), padded to 16 bytes. An empty tile is 0 words.
//
// Prints per shape, sparsity and N the median µs (L2 flushed) of cuBLAS, the
// bitmap kernel and this one, with the largest error against cuBLAS.
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/check.h"
#include "kernels/spmm/consumer_warps.cuh"
#include "kernels/spmm/ptx.cuh"
#include "kernels/spmm/stream_k.cuh"
#include "runtime/device_buffer.h"
#include "sparsellm/bitmap.h"
#include "sparsellm/device.h"
#include "sparsellm/spmm.h"

namespace sparsellm {
namespace {

using stream_k::KernelArgs;
using namespace consumer_warps;

// Three layouts of the slots (V):
//   kSlots:      a slot mask, the occupied slots' values (the bitmap decode);
//   kDenseSlots: every slot stored: lane l's four A registers of row block i,
//                k32 block j at value words 4 (32 (2 i + j) + l) .. + 3, one
//                16-byte load;
//   kGroupMask:  a register (group) mask and the non-empty registers' 32-bit
//                words packed. Lanes 8 w .. 8 w + 7 of row block i, block j:
//                words kGroupMaskWord + 16 i + 4 w + 2 j (mask: bit 4 (l % 8) + r
//                for lane l's register r) and + 1 (the value word of their
//                first register): one 16-byte load serves both blocks.
enum Variant { kSlots = 0, kDenseSlots = 1, kGroupMask = 2 };
template <int V>
struct Layout {
  static constexpr int kSlotMaskWord = 0, kMetaWord = V == kSlots ? 128 : 0, kGroupMaskWord = 256,
                       kValueStartWord = kMetaWord + 256 + (V == kGroupMask ? 128 : 0),
                       kResStartWord = kValueStartWord + 4, kResBaseWord = kResStartWord + 4,
                       kResCountWord = kResBaseWord + 1, kHeaderWords = kResBaseWord + 4;
};
constexpr int kStageTileBytes = 18432;  // as the bitmap kernel's stage
constexpr int kMaxTileWords = kStageTileBytes / 4 - 4;

// ---------------------------------------------------------------- encoder
struct Encoded {
  std::vector<uint32_t> offsets, data;
  int64_t residual = 0, nnz = 0;
};

template <int V>
void encode_tile(const uint16_t* w, int64_t m, int64_t k, int64_t r0, int64_t c0, std::vector<uint32_t>& out,
                 int64_t& residual, int64_t& nnz) {
  auto at = [&](int row, int col) -> uint16_t {
    const int64_t gr = r0 + row, gc = c0 + col;
    return gr < m && gc < k ? w[gr * k + gc] : uint16_t(0);
  };
  // Per tile row and group (16 groups of 4 columns): the two slots, their indices, the rest.
  uint16_t slot_value[128][16][2];
  bool slot_used[128][16][2];
  uint32_t nibble[128][16];
  std::vector<uint32_t> res[8];
  int64_t tile_nnz = 0;
  for (int row = 0; row < 128; ++row)
    for (int g = 0; g < 16; ++g) {
      int pos[4], n = 0;
      for (int e = 0; e < 4; ++e)
        if (at(row, 4 * g + e) & 0x7FFF) pos[n++] = e;
      tile_nnz += n;
      int i0, i1;
      slot_used[row][g][0] = slot_used[row][g][1] = false;
      slot_value[row][g][0] = slot_value[row][g][1] = 0;
      if (n == 0) {
        i0 = 0, i1 = 1;
      } else if (n == 1) {
        if (pos[0] < 3) {
          i0 = pos[0], i1 = 3;
          slot_used[row][g][0] = true, slot_value[row][g][0] = at(row, 4 * g + pos[0]);
        } else {
          i0 = 2, i1 = 3;
          slot_used[row][g][1] = true, slot_value[row][g][1] = at(row, 4 * g + 3);
        }
      } else {
        i0 = pos[0], i1 = pos[1];
        slot_used[row][g][0] = slot_used[row][g][1] = true;
        slot_value[row][g][0] = at(row, 4 * g + pos[0]);
        slot_value[row][g][1] = at(row, 4 * g + pos[1]);
        for (int e = 2; e < n; ++e) {
          const int col = 4 * g + pos[e];
          const int r = row % 16;  // staging offset: 128-byte rows, 16-byte chunks swizzled by r & 7
          const uint32_t offset = r * 128 + (((col >> 3) ^ (r & 7)) << 4) + (col & 7) * 2;
          res[row / 16].push_back(uint32_t(at(row, col)) | offset << 16);
        }
      }
      nibble[row][g] = uint32_t(i0) | uint32_t(i1) << 2;
    }
  if (tile_nnz == 0) return;
  nnz += tile_nnz;
  using L = Layout<V>;
  constexpr int kSlotMaskWord = L::kSlotMaskWord, kMetaWord = L::kMetaWord, kValueStartWord = L::kValueStartWord,
                kResStartWord = L::kResStartWord, kResBaseWord = L::kResBaseWord, kResCountWord = L::kResCountWord,
                kHeaderWords = L::kHeaderWords;
  constexpr bool kDense = V == kDenseSlots;
  std::vector<uint32_t> header(kHeaderWords, 0);
  std::vector<uint16_t> values;
  uint16_t* value_start = reinterpret_cast<uint16_t*>(&header[kValueStartWord]);
  uint16_t* res_start = reinterpret_cast<uint16_t*>(&header[kResStartWord]);
  uint32_t res_count = 0;
  for (int i = 0; i < 8; ++i) {
    if (V != kGroupMask) value_start[i] = uint16_t(values.size());
    res_start[i] = uint16_t(res_count);
    res_count += uint32_t(res[i].size());
    for (int j = 0; j < 2; ++j) {
      if (V == kGroupMask) {
        for (int b = 0; b < 256; b += 2) {  // register r = (b % 8) / 2 of lane l = b / 8: slots b, b + 1
          const int row = 16 * i + bitmap::bit_row(0, b), c = bitmap::bit_col(0, b);
          const int g = 8 * j + c / 2;  // both slots of a register are one group's
          const int l = b / 8, r = (b % 8) / 2;
          if (b % 64 == 0) header[L::kGroupMaskWord + 16 * i + 4 * (l / 8) + 2 * j + 1] = uint32_t(values.size() / 2);
          if (slot_used[row][g][0] || slot_used[row][g][1]) {
            header[L::kGroupMaskWord + 16 * i + 4 * (l / 8) + 2 * j] |= 1u << (4 * (l % 8) + r);
            values.push_back(slot_value[row][g][0]);
            values.push_back(slot_value[row][g][1]);
          }
        }
      }
      uint32_t mask[8] = {};
      for (int b = 0; b < 256 && V != kGroupMask; ++b) {  // slot (row, column c of the 16 × 16 slot matrix)
        const int row = 16 * i + bitmap::bit_row(0, b), c = bitmap::bit_col(0, b);
        const int g = 8 * j + c / 2, s = c % 2;
        if (kDense) {
          values.push_back(slot_value[row][g][s]);  // bit order = lane-major register order
        } else if (slot_used[row][g][s]) {
          mask[b / 32] |= 1u << (b % 32);
          values.push_back(slot_value[row][g][s]);
        }
      }
      if (V == kSlots)
        for (int q = 0; q < 8; ++q) header[kSlotMaskWord + 16 * i + 2 * q + j] = mask[q];
      for (int g = 0; g < 8; ++g)
        for (int p = 0; p < 2; ++p) {
          uint32_t lo = 0, hi = 0;
          for (int gg = 0; gg < 4; ++gg) {
            lo |= nibble[16 * i + g][8 * j + 4 * p + gg] << (4 * gg);
            hi |= nibble[16 * i + g + 8][8 * j + 4 * p + gg] << (4 * gg);
          }
          header[kMetaWord + 32 * i + 4 * g + 2 * p + j] = lo | hi << 16;
        }
    }
  }
  if (values.size() % 2) values.push_back(0);
  header[kResBaseWord] = uint32_t(kHeaderWords + values.size() / 2);
  header[kResCountWord] = res_count;
  residual += res_count;
  const size_t begin = out.size();
  out.insert(out.end(), header.begin(), header.end());
  for (size_t v = 0; v < values.size(); v += 2) out.push_back(uint32_t(values[v]) | uint32_t(values[v + 1]) << 16);
  for (auto& r : res) out.insert(out.end(), r.begin(), r.end());
  while ((out.size() - begin) % 4) out.push_back(0);
  SPARSELLM_CHECK_ARG(out.size() - begin <= size_t(kMaxTileWords), "sparse_tc: a tile of ", out.size() - begin,
                  " words does not fit a stage");
}

template <int V>
Encoded encode(const std::vector<uint16_t>& w, int64_t m, int64_t k) {
  const int64_t tm = (m + 127) / 128, tk = (k + 63) / 64;
  const int threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::vector<std::vector<uint32_t>>> rows(tm, std::vector<std::vector<uint32_t>>(tk));
  std::vector<int64_t> res(threads, 0), nnz(threads, 0);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (int64_t r = t; r < tm; r += threads)
        for (int64_t c = 0; c < tk; ++c) encode_tile<V>(w.data(), m, k, 128 * r, 64 * c, rows[r][c], res[t], nnz[t]);
    });
  for (auto& th : pool) th.join();
  Encoded e;
  e.offsets.push_back(0);
  for (int64_t r = 0; r < tm; ++r)
    for (int64_t c = 0; c < tk; ++c) {
      e.data.insert(e.data.end(), rows[r][c].begin(), rows[r][c].end());
      e.offsets.push_back(uint32_t(e.data.size()));
    }
  for (int t = 0; t < threads; ++t) e.residual += res[t], e.nnz += nnz[t];
  return e;
}

// ---------------------------------------------------------------- kernel
template <typename T>
__device__ __forceinline__ void mma_sp(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, uint32_t b2,
                                       uint32_t b3, uint32_t meta) {
  if constexpr (std::is_same_v<T, __half>)
    asm volatile(
        "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(b2), "r"(b3), "r"(meta));
  else
    asm volatile(
        "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(b2), "r"(b3), "r"(meta));
}

__device__ __forceinline__ uint2 ld_shared_v2(uint32_t addr) {
  uint2 v;
  asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "r"(addr));
  return v;
}
__device__ __forceinline__ uint32_t ld_shared_u32(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(addr));
  return v;
}
__device__ __forceinline__ uint32_t ld_shared_u16(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.u16 %0, [%1];\n" : "=r"(v) : "r"(addr));
  return v;
}

// acc += (row block `warp` of the tile in `stage`) · (X tile)ᵀ; `staging`: the
// warp's 16 × 64 dense tile (128-byte rows, chunks swizzled by row & 7), zero.
template <typename T, int BN, int V>
__device__ __forceinline__ void consume(const unsigned char* stage_ptr, uint32_t stage, int warp,
                                        Accumulators<BN>& acc, uint32_t staging) {
  using L = Layout<V>;
  constexpr int kSlotMaskWord = L::kSlotMaskWord, kMetaWord = L::kMetaWord, kValueStartWord = L::kValueStartWord,
                kResStartWord = L::kResStartWord, kResBaseWord = L::kResBaseWord, kResCountWord = L::kResCountWord,
                kHeaderWords = L::kHeaderWords;
  const int lane = threadIdx.x & 31;
  const uint2 meta = ld_shared_v2(stage + 4 * (kMetaWord + 32 * warp + 4 * (lane >> 2) + 2 * (lane & 1)));
  const uint32_t xrow = lane & 7;
  const uint32_t xb0 = stage + kStageTileBytes + xrow * 128 + ((((lane >> 3) & 3) ^ xrow) << 4);
  uint32_t b[BN / 8][2][4];
  uint32_t a[2][4];
  if constexpr (V == kDenseSlots) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const uint4 v = ptx::ld_shared_v4(stage + 4 * kHeaderWords + 16 * (32 * (2 * warp + j) + lane));
      a[j][0] = v.x, a[j][1] = v.y, a[j][2] = v.z, a[j][3] = v.w;
    }
  } else if constexpr (V == kGroupMask) {
    const uint32_t* words = reinterpret_cast<const uint32_t*>(stage_ptr + kHeaderWords * 4);
    const int shift = 4 * (lane & 7);
    const uint32_t below = (1u << shift) - 1;
    const uint4 gm = ptx::ld_shared_v4(stage + 4 * (L::kGroupMaskWord + 16 * warp + 4 * (lane >> 3)));
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const uint32_t own = j == 0 ? gm.x : gm.z;
      const uint32_t nib = (own >> shift) & 0xF;
      const uint32_t* p = words + (j == 0 ? gm.y : gm.w) + __popc(own & below);
      a[j][0] = nib & 1 ? p[0] : 0u;
      a[j][1] = nib & 2 ? p[nib & 1] : 0u;
      a[j][2] = nib & 4 ? p[__popc(nib & 3)] : 0u;
      a[j][3] = nib & 8 ? p[__popc(nib & 7)] : 0u;
    }
  } else {
  const int shift = 8 * (lane & 3);
  const uint32_t below = (1u << shift) - 1;
  const uint2 mw2 = ld_shared_v2(stage + 4 * (kSlotMaskWord + 16 * warp) + 8 * (lane >> 2));
  const uint32_t mw[2] = {mw2.x, mw2.y};
  const uint32_t row_start = ld_shared_u16(stage + 4 * kValueStartWord + 2 * warp);

  const uint32_t count = __popc(mw[0]) | (__popc(mw[1]) << 16);
  uint32_t s = count;
#pragma unroll
  for (int d = 4; d < 32; d *= 2) {
    const uint32_t t = __shfl_up_sync(0xFFFFFFFFu, s, d);
    if (lane >= d) s += t;
  }
  const uint32_t total = __shfl_sync(0xFFFFFFFFu, s, 31);
  const uint32_t scan = s - count;
  const uint32_t first[2] = {row_start + (scan & 0xFFFF), row_start + (total & 0xFFFF) + (scan >> 16)};

  const unsigned short* values = reinterpret_cast<const unsigned short*>(stage_ptr + kHeaderWords * 4);
  // B fragments: for 8 columns nt and k32 block j one ldmatrix.x4 of the four
  // 8 × 8 matrices (k chunks 4 j .. 4 j + 3): the four registers of mma.sp's B,
  // and the dense B of k16 steps 2 j (registers 0, 1) and 2 j + 1 (2, 3).
#pragma unroll
  for (int j = 0; j < 2; ++j) {
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
  }
  }
#pragma unroll
  for (int nt = 0; nt < BN / 8; ++nt)
#pragma unroll
    for (int j = 0; j < 2; ++j) ptx::ldmatrix_x4((xb0 + nt * 1024) ^ (j << 6), b[nt][j]);
#pragma unroll
  for (int j = 0; j < 2; ++j)
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt)
      mma_sp<T>(acc[nt], a[j], b[nt][j][0], b[nt][j][1], b[nt][j][2], b[nt][j][3], j == 0 ? meta.x : meta.y);

  // The residual: entries (value | staging offset << 16) scattered into the
  // staging tile, multiplied densely, undone. A lane holds its first entry.
  const uint32_t rs = ld_shared_u16(stage + 4 * kResStartWord + 2 * warp);
  const uint32_t re = warp == 7 ? ld_shared_u32(stage + 4 * kResCountWord)
                                : ld_shared_u16(stage + 4 * kResStartWord + 2 * (warp + 1));
  if (re > rs) {
    const uint32_t base = stage + 4 * ld_shared_u32(stage + 4 * kResBaseWord);
    const bool held = rs + lane < re;
    const uint32_t entry = held ? ld_shared_u32(base + 4 * (rs + lane)) : 0u;
    if (held) ptx::st_shared_u16(staging + (entry >> 16), entry & 0xFFFF);
    for (uint32_t i = rs + 32 + lane; i < re; i += 32) {
      const uint32_t more = ld_shared_u32(base + 4 * i);
      ptx::st_shared_u16(staging + (more >> 16), more & 0xFFFF);
    }
    __syncwarp();
    const uint32_t a0 = staging + (lane & 15) * 128 + ((((lane >> 4) ^ (lane & 7))) << 4);
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
      uint32_t a[4];
      ptx::ldmatrix_x4(swizzled_k16_step(a0, ks), a);
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt)
        ptx::mma_m16n8k16<T>(acc[nt], a, b[nt][ks >> 1][2 * (ks & 1)], b[nt][ks >> 1][2 * (ks & 1) + 1]);
    }
    __syncwarp();
    if (held) ptx::st_shared_u16(staging + (entry >> 16), 0);
    for (uint32_t i = rs + 32 + lane; i < re; i += 32) ptx::st_shared_u16(staging + (ld_shared_u32(base + 4 * i) >> 16), 0);
    __syncwarp();
  }
}

template <int BN>
struct Config {
  static constexpr int kThreads = consumer_warps::kThreads;
  static constexpr int kStages = 4;
  static constexpr int kStageBytes = kStageTileBytes + kXStageBytes<BN>;
  static constexpr int kStagingOffset = kStages * kStageBytes;      // 8 warps × 2 KiB
  static constexpr int kBarOffset = kStagingOffset + 8 * 2048;
  static constexpr int kMetaOffset = kBarOffset + 2 * kStages * 8;
  static constexpr int kSmemBytes = kMetaOffset + kStages * 4 + 16;
};

template <typename T>
__device__ __forceinline__ void produce_tile(const KernelArgs<T>& a, uint32_t w0, uint32_t w1, uint32_t stage,
                                             uint32_t full, uint32_t meta) {
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
#endif
}

template <typename T, int BN, int V>
__global__ void __launch_bounds__(Config<BN>::kThreads, 2) sparse_tc_kernel(const __grid_constant__ KernelArgs<T> a) {
#if __CUDA_ARCH__ >= 900
  using C = Config<BN>;
  extern __shared__ __align__(1024) unsigned char smem[];
  const StreamKBlock blk = a.plan[blockIdx.x];
  if (blk.unit_begin == blk.unit_end) return;
  const int warp = threadIdx.x >> 5;
  const uint32_t stages = ptx::smem_addr(smem);
  const uint32_t bars = ptx::smem_addr(smem + C::kBarOffset);
  const volatile uint32_t* meta = reinterpret_cast<const volatile uint32_t*>(smem + C::kMetaOffset);
  int* last_flag = reinterpret_cast<int*>(smem + C::kMetaOffset + C::kStages * 4);
  const uint32_t staging = stages + C::kStagingOffset + 2048 * (warp & 7);
  if (threadIdx.x == 0) init_stage_barriers<C::kStages>(a, bars);
  if (warp < 8)
    for (int i = threadIdx.x & 31; i < 128; i += 32) ptx::st_shared_zero_v4(staging + 16 * i);
  __syncthreads();

  const uint32_t first_word = a.offsets[blk.unit_begin];
  TileEnds ends;
  run_block<T, BN, C::kStages, C::kStages>(
      a, blk, bars, last_flag, [&](int s) { return stages + s * C::kStageBytes + kStageTileBytes; },
      [&](int u, int s) {
        ends.advance(a.offsets, u, blk.unit_begin, blk.unit_end);
        const int j = u - blk.unit_begin;
        produce_tile<T>(a, ends.begin_of(j, first_word), ends.end_of(j), stages + s * C::kStageBytes, bars + 8 * s,
                        stages + C::kMetaOffset + 4 * s);
      },
      [&](int, int s, Accumulators<BN>& acc) {
        if (meta[s] > 0) consume<T, BN, V>(smem + s * C::kStageBytes, stages + s * C::kStageBytes, warp, acc, staging);
      });
#endif
}

// ---------------------------------------------------------------- driver
#define CUBLAS_OK(x) SPARSELLM_CHECK_CUBLAS(x)

__global__ void read_kernel(const float4* p, size_t n, float* sink) {
  float s = 0;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const float4 v = p[i];
    s += v.x + v.y + v.z + v.w;
  }
  if (s == 1234.5f) *sink = s;
}

struct Timer {
  DeviceBuffer flush{size_t(256) << 20, "flush"}, sink{16, "sink"};
  cudaEvent_t e0, e1;
  Timer() {
    SPARSELLM_CHECK_CUDA(cudaMemset(flush.data(), 0, size_t(256) << 20));
    SPARSELLM_CHECK_CUDA(cudaEventCreate(&e0));
    SPARSELLM_CHECK_CUDA(cudaEventCreate(&e1));
  }
  template <typename F>
  double median_us(F f, int reps = 30) {
    for (int i = 0; i < 3; ++i) f();
    std::vector<float> t;
    for (int i = 0; i < reps; ++i) {
      read_kernel<<<264, 512>>>(static_cast<const float4*>(flush.data()), (size_t(256) << 20) / 16,
                                static_cast<float*>(sink.data()));
      SPARSELLM_CHECK_CUDA(cudaEventRecord(e0));
      f();
      SPARSELLM_CHECK_CUDA(cudaEventRecord(e1));
      SPARSELLM_CHECK_CUDA(cudaEventSynchronize(e1));
      float ms;
      SPARSELLM_CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
      t.push_back(ms * 1000);
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  }
};

struct Weight {
  DeviceBuffer words, offsets, plan, workspace;
  int blocks = 0;
  SpmmParams params(const void* x, void* y, int64_t n, int64_t m, int64_t k, SparseFormat f) const {
    SpmmParams p;
    p.x = x, p.y = y, p.n = n;
    p.weight.words = static_cast<const uint32_t*>(words.data());
    p.weight.tile_offsets = static_cast<const uint32_t*>(offsets.data());
    p.weight.m = m, p.weight.k = k, p.weight.dtype = DType::kFloat16, p.weight.format = f;
    p.plan = static_cast<const StreamKBlock*>(plan.data());
    p.plan_blocks = blocks;
    p.workspace = workspace.data();
    p.workspace_bytes = workspace.bytes();
    return p;
  }
};

Weight upload(const std::vector<uint32_t>& offsets, const std::vector<uint32_t>& data, int64_t m, int64_t k) {
  Weight w;
  w.words = DeviceBuffer(std::max<size_t>(16, data.size() * 4), "words");
  w.words.upload(data.data(), data.size() * 4, nullptr);
  w.offsets = DeviceBuffer(offsets.size() * 4, "offsets");
  w.offsets.upload(offsets.data(), offsets.size() * 4, nullptr);
  w.blocks = spmm_plan_blocks();
  const auto plan = spmm_plan(offsets.data(), m, k, w.blocks);
  w.plan = DeviceBuffer(plan.size() * sizeof(StreamKBlock), "plan");
  w.plan.upload(plan.data(), plan.size() * sizeof(StreamKBlock), nullptr);
  const size_t ws = spmm_workspace_bytes(m, 128, w.blocks);
  w.workspace = DeviceBuffer(ws, "workspace");
  SPARSELLM_CHECK_CUDA(cudaMemset(w.workspace.data(), 0, ws));
  SPARSELLM_CHECK_CUDA(cudaDeviceSynchronize());
  return w;
}

template <int V>
void run_sparse_tc(const SpmmParams& p) {
  const DeviceInfo& device = stream_k::check_params(p);
  stream_k::with_block_columns(p.n, [&](auto columns) {
    constexpr int BN = decltype(columns)::value;
    if constexpr (BN <= 32)
      stream_k::launch<__half, BN, sparse_tc_kernel<__half, BN, V>>(p, device, Config<BN>::kThreads,
                                                                 Config<BN>::kSmemBytes, "sparse_tc_kernel", nullptr);
    else
      SPARSELLM_CHECK_ARG(false, "sparse_tc: N <= 32 only");
  });
}

// Diagnostics on small matrices: W with at most two nonzeros a group (no
// residual), with only groups of 3–4 (mostly residual), and random; N = 8 and 16.
void self_test(cublasHandle_t handle) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  for (int kind = 0; kind < 3; ++kind)
    for (int64_t m : {128, 256})
      for (int64_t k : {64, 192}) {
        std::vector<uint16_t> w(m * k, 0);
        for (int64_t r = 0; r < m; ++r)
          for (int64_t g = 0; g < k / 4; ++g) {
            const int want = kind == 0 ? int(u(rng) * 3) : kind == 1 ? (u(rng) < 0.3f ? 3 + int(u(rng) * 2) : int(u(rng) * 3)) : -1;
            int placed = 0;
            for (int e = 0; e < 4; ++e) {
              const bool on = want < 0 ? u(rng) < 0.3f : (4 - e) <= (want - placed) || (placed < want && u(rng) < 0.5f);
              if (on) {
                w[r * k + 4 * g + e] = __half_as_ushort(__float2half(u(rng) - 0.5f + (u(rng) < 0.5f ? 0.01f : -0.01f)));
                ++placed;
              }
            }
          }
        std::vector<uint16_t> xh(16 * k);
        for (auto& v : xh) v = __half_as_ushort(__float2half(u(rng) - 0.5f));
        DeviceBuffer x(xh.size() * 2, "x"), y(16 * m * 2, "y"), yr(16 * m * 2, "yr"), wd(m * k * 2, "w");
        x.upload(xh.data(), xh.size() * 2, nullptr);
        wd.upload(w.data(), w.size() * 2, nullptr);
        const Encoded es = encode<kSlots>(w, m, k), ed = encode<kDenseSlots>(w, m, k), eg = encode<kGroupMask>(w, m, k);
        const Weight ws = upload(es.offsets, es.data, m, k), wdn = upload(ed.offsets, ed.data, m, k),
                     wg = upload(eg.offsets, eg.data, m, k);
        for (int n : {8, 16}) {
          const float one = 1.f, zero = 0.f;
          SPARSELLM_CHECK_CUBLAS(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, int(m), n, int(k), &one, wd.data(),
                                              CUDA_R_16F, int(k), x.data(), CUDA_R_16F, int(k), &zero, yr.data(),
                                              CUDA_R_16F, int(m), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
          std::vector<uint16_t> got(n * m), ref(n * m);
          SPARSELLM_CHECK_CUDA(cudaMemcpy(ref.data(), yr.data(), ref.size() * 2, cudaMemcpyDeviceToHost));
          double err[3];
          for (int d = 0; d < 3; ++d) {
            SPARSELLM_CHECK_CUDA(cudaMemset(y.data(), 0xFF, n * m * 2));
            if (d == 0) run_sparse_tc<kSlots>(ws.params(x.data(), y.data(), n, m, k, SparseFormat::kBitmap));
            if (d == 1) run_sparse_tc<kDenseSlots>(wdn.params(x.data(), y.data(), n, m, k, SparseFormat::kBitmap));
            if (d == 2) run_sparse_tc<kGroupMask>(wg.params(x.data(), y.data(), n, m, k, SparseFormat::kBitmap));
            SPARSELLM_CHECK_CUDA(cudaDeviceSynchronize());
            SPARSELLM_CHECK_CUDA(cudaMemcpy(got.data(), y.data(), got.size() * 2, cudaMemcpyDeviceToHost));
            err[d] = 0;
            int shown = 0;
            for (size_t i = 0; i < got.size(); ++i) {
              const float g = __half2float(__ushort_as_half(got[i])), r = __half2float(__ushort_as_half(ref[i]));
              const double e = std::isnan(g) ? 1e9 : std::fabs(double(g) - r);
              err[d] = std::max(err[d], e);
              if (e > 0.05 && shown++ < 3)
                std::printf("    variant %d n=%zu m=%zu got %g want %g\n", d, i / m, i % m, g, r);
            }
          }
          std::printf("self-test kind %d (%s) m %ld k %ld n %d: residual %ld of %ld, max abs err slots %.2e dense %.2e group %.2e\n",
                      kind, kind == 0 ? "<=2 a group" : kind == 1 ? "30% of groups 3-4" : "random 70%", long(m), long(k), n,
                      long(es.residual), long(es.nnz), err[0], err[1], err[2]);
        }
      }
}

int main_(int argc, char** argv) {
  const std::string out = argc > 1 ? argv[1] : ".";
  struct Shape {
    const char* name;
    int64_t m, k;
  };
  const Shape shapes[] = {{"opt66b.attn_out", 9216, 9216},  {"opt66b.fc1", 36864, 9216},
                          {"opt66b.qkv", 27648, 9216},      {"opt66b.fc2", 9216, 36864},
                          {"opt175b.fc1.tp8", 6144, 12288}, {"llama2-7b.down", 4096, 11008}};
  const double sparsities[] = {0.6, 0.7, 0.8, 0.9};
  const int ns[] = {1, 8, 16, 32};
  cublasHandle_t handle;
  CUBLAS_OK(cublasCreate(&handle));
  self_test(handle);
  std::fflush(stdout);
  if (argc > 2 && std::string(argv[2]) == "--self-test") return 0;
  Timer timer;
  std::ofstream json(out + "/sparse-tc.jsonl");
  std::printf("shape spars N | us: cublas bitmap slots dense_slots group_mask | speedup: the same | residual%% | MB: "
              "bitmap slots dense_slots group_mask | max err: the same\n");
  std::mt19937_64 rng(12345);
  for (const Shape& sh : shapes) {
    const int64_t m = sh.m, k = sh.k;
    std::vector<uint16_t> x_host(128 * k);
    std::normal_distribution<float> nd(0.f, 1.f);
    for (auto& v : x_host) v = __half_as_ushort(__float2half(nd(rng)));
    DeviceBuffer x(x_host.size() * 2, "x"), y(128 * m * 2, "y"), y_ref(128 * m * 2, "y_ref"), wd(m * k * 2, "w");
    x.upload(x_host.data(), x_host.size() * 2, nullptr);
    for (double s : sparsities) {
      std::vector<uint16_t> w(m * k);
      {
        const int threads = std::max(1u, std::thread::hardware_concurrency());
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t)
          pool.emplace_back([&, t] {
            std::mt19937_64 r(rng() + t * 7919);
            std::uniform_real_distribution<float> u(0.f, 1.f);
            for (int64_t i = t; i < m * k; i += threads) {
              const float keep = u(r);
              const float v = (u(r) - 0.5f) * 0.2f;
              w[i] = keep < s || v == 0.f ? uint16_t(0) : __half_as_ushort(__float2half(v));
            }
          });
        for (auto& th : pool) th.join();
      }
      wd.upload(w.data(), w.size() * 2, nullptr);
      const Encoded es = encode<kSlots>(w, m, k), ed = encode<kDenseSlots>(w, m, k), eg = encode<kGroupMask>(w, m, k);
      const BitmapHost bm = encode_bitmap(w.data(), m, k, DType::kFloat16);
      const Weight ws = upload(es.offsets, es.data, m, k), wdn = upload(ed.offsets, ed.data, m, k),
                   wg = upload(eg.offsets, eg.data, m, k);
      const Weight bmw = upload(bm.tile_offsets, bm.data, m, k);
      for (int n : ns) {
        const float one = 1.f, zero = 0.f;
        auto cublas = [&](void* yp) {
          CUBLAS_OK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, int(m), n, int(k), &one, wd.data(), CUDA_R_16F,
                                 int(k), x.data(), CUDA_R_16F, int(k), &zero, yp, CUDA_R_16F, int(m),
                                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        };
        cublas(y_ref.data());
        std::vector<uint16_t> got(n * m), ref(n * m);
        SPARSELLM_CHECK_CUDA(cudaMemcpy(ref.data(), y_ref.data(), ref.size() * 2, cudaMemcpyDeviceToHost));
        auto max_err = [&](auto run) {  // largest |y − y_cublas| / (1 + |y_cublas|), output poisoned first
          SPARSELLM_CHECK_CUDA(cudaMemset(y.data(), 0xFF, n * m * 2));
          run();
          SPARSELLM_CHECK_CUDA(cudaDeviceSynchronize());
          SPARSELLM_CHECK_CUDA(cudaMemcpy(got.data(), y.data(), got.size() * 2, cudaMemcpyDeviceToHost));
          double worst = 0;
          for (size_t i = 0; i < got.size(); ++i) {
            const float g = __half2float(__ushort_as_half(got[i])), r = __half2float(__ushort_as_half(ref[i]));
            worst = std::isnan(g) ? 1e9 : std::max(worst, std::fabs(double(g) - r) / (1.0 + std::fabs(double(r))));
          }
          return worst;
        };
        const SpmmParams ps = ws.params(x.data(), y.data(), n, m, k, SparseFormat::kBitmap);
        const SpmmParams pd = wdn.params(x.data(), y.data(), n, m, k, SparseFormat::kBitmap);
        const SpmmParams pg = wg.params(x.data(), y.data(), n, m, k, SparseFormat::kBitmap);
        const SpmmParams pb = bmw.params(x.data(), y.data(), n, m, k, SparseFormat::kBitmap);
        const double err_s = max_err([&] { run_sparse_tc<kSlots>(ps); });
        const double err_d = max_err([&] { run_sparse_tc<kDenseSlots>(pd); });
        const double err_g = max_err([&] { run_sparse_tc<kGroupMask>(pg); });
        const double err_b = max_err([&] { spmm_bitmap(pb, nullptr); });
        const double t_cublas = timer.median_us([&] { cublas(y.data()); });
        const double t_bitmap = timer.median_us([&] { spmm_bitmap(pb, nullptr); });
        const double t_s = timer.median_us([&] { run_sparse_tc<kSlots>(ps); });
        const double t_d = timer.median_us([&] { run_sparse_tc<kDenseSlots>(pd); });
        const double t_g = timer.median_us([&] { run_sparse_tc<kGroupMask>(pg); });
        const double res_pct = 100.0 * es.residual / std::max<int64_t>(1, es.nnz);
        std::printf(
            "%-18s %5.2f %4d %7.1f %7.1f %7.1f %7.1f %7.1f | %5.2f %5.2f %5.2f %5.2f | %5.2f | %6.1f %6.1f %6.1f %6.1f | "
            "%.1e %.1e %.1e %.1e\n",
            sh.name, s, n, t_cublas, t_bitmap, t_s, t_d, t_g, t_cublas / t_bitmap, t_cublas / t_s, t_cublas / t_d,
            t_cublas / t_g, res_pct, bm.data.size() * 4e-6, es.data.size() * 4e-6, ed.data.size() * 4e-6,
            eg.data.size() * 4e-6, err_b, err_s, err_d, err_g);
        std::fflush(stdout);
        json << "{\"shape\":\"" << sh.name << "\",\"M\":" << m << ",\"K\":" << k << ",\"sparsity\":" << s
             << ",\"N\":" << n << ",\"cublas_us\":" << t_cublas << ",\"bitmap_us\":" << t_bitmap
             << ",\"slots_us\":" << t_s << ",\"dense_slots_us\":" << t_d << ",\"group_mask_us\":" << t_g
             << ",\"group_mask_words\":" << eg.data.size() << ",\"bitmap_words\":" << bm.data.size()
             << ",\"slots_words\":" << es.data.size() << ",\"dense_slots_words\":" << ed.data.size()
             << ",\"residual_pct\":" << res_pct << ",\"err_bitmap\":" << err_b << ",\"err_slots\":" << err_s
             << ",\"err_dense_slots\":" << err_d << ",\"err_group_mask\":" << err_g << "}\n";
      }
    }
  }
  CUBLAS_OK(cublasDestroy(handle));
  return 0;
}

}  // namespace
}  // namespace sparsellm

int main(int argc, char** argv) {
  try {
    return sparsellm::main_(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sparse_tc: %s\n", e.what());
    return 1;
  }
}
