// Random weights on the GPU (random_weights.h).
//
// Dense: a grid-stride loop, one element per thread and step.
//
// Bitmap: one block of 8 warps per 128 × 64 tile; warp i draws row block i
// (rows [16 i, 16 i + 16)), lane l the 8 elements e of each of the row block's
// four 16 × 16 blocks that are its A values (mask bits b = 8 l + e), as a byte
// per block: `packed` byte j = lane l's bits of block (i, j). Counting pass:
// the popcounts summed over the tile. Filling pass:
//   - mask word 32 i + 4 q + j (bits [32 q, 32 q + 32) of block (i, j)) is byte j
//     of lanes 4 q … 4 q + 3, gathered by lane 4 q with shuffles;
//   - the values follow in mask bit order: block j's values start after those of
//     blocks < j of the row block, lane l's after those of lanes < l (a warp scan
//     of four 16-bit counters packed in 64 bits), and element e after the set
//     bits of lane l's byte below e;
//   - row_start[i], the first value of row block i, sums the earlier warps'
//     totals through shared memory.
// Elements outside the matrix (edge tiles) are never kept.
#include "kernels/random_weights/random_weights.h"

#include <cmath>

#include "common/check.h"
#include "kernels/device_math.cuh"
#include "kernels/sampling/philox.h"
#include "sparsellm/bitmap.h"

namespace sparsellm {
namespace {

using namespace kernels;

constexpr int kDenseThreads = 256;
constexpr int kTileThreads = 32 * bitmap::kBlocksM;  // a warp per row block

struct DrawArgs {
  int64_t rows, cols, tiles_k;
  uint32_t key0, key1, tensor;
  uint64_t threshold;  // keep when the first random word < threshold (2^32: always)
  float std, offset;
};

__device__ __forceinline__ Philox4x32 draw(const DrawArgs& a, uint64_t index) {
  return philox4x32_10(Philox4x32{{uint32_t(index), uint32_t(index >> 32), a.tensor, 0u}}, a.key0, a.key1);
}

__device__ __forceinline__ bool kept(const DrawArgs& a, const Philox4x32& d) { return uint64_t(d.v[0]) < a.threshold; }

// offset + std · z, z standard normal by Box–Muller; magnitude at least 2^-14,
// so that no kept value rounds to zero in fp16 or bf16.
__device__ __forceinline__ float value(const DrawArgs& a, const Philox4x32& d) {
  constexpr float kTwoToMinus32 = 2.3283064365386963e-10f, kTiny = 6.103515625e-05f;
  const float u1 = (float(d.v[1]) + 0.5f) * kTwoToMinus32;  // (0, 1]
  const float u2 = float(d.v[2]) * kTwoToMinus32;
  const float v = a.offset + a.std * sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
  return fabsf(v) < kTiny ? copysignf(kTiny, v) : v;
}

template <typename T>
__device__ __forceinline__ uint16_t bits16(float v) {
  const T x = from_float<T>(v);
  return *reinterpret_cast<const uint16_t*>(&x);
}

template <typename T>
__global__ void __launch_bounds__(kDenseThreads) random_dense_kernel(T* out, DrawArgs a, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const Philox4x32 d = draw(a, uint64_t(i));
    out[i] = from_float<T>(kept(a, d) ? value(a, d) : 0.0f);
  }
}

// Byte j = this lane's mask bits of block (i, j) of tile t (row block i = warp).
__device__ __forceinline__ uint32_t lane_masks(const DrawArgs& a, int64_t t, int i, int lane) {
  const int64_t r0 = t / a.tiles_k * bitmap::kTileM, c0 = t % a.tiles_k * bitmap::kTileK;
  uint32_t packed = 0;
#pragma unroll
  for (int j = 0; j < bitmap::kBlocksK; ++j)
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const int b = 8 * lane + e;
      const int64_t r = r0 + bitmap::bit_row(i, b), c = c0 + bitmap::bit_col(j, b);
      if (r < a.rows && c < a.cols && kept(a, draw(a, uint64_t(r) * uint64_t(a.cols) + uint64_t(c))))
        packed |= 1u << (8 * j + e);
    }
  return packed;
}

__global__ void __launch_bounds__(kTileThreads) random_bitmap_counts_kernel(uint32_t* tile_nnz, DrawArgs a) {
  __shared__ uint32_t partial[32];
  const int64_t t = blockIdx.x;
  const uint32_t count = __popc(lane_masks(a, t, threadIdx.x >> 5, threadIdx.x & 31));
  const uint32_t total = block_reduce(count, SumOp{}, 0u, partial);
  if (threadIdx.x == 0) tile_nnz[t] = total;
}

template <typename T>
__global__ void __launch_bounds__(kTileThreads) random_bitmap_tiles_kernel(uint32_t* tiles, const uint32_t* offsets,
                                                                            DrawArgs a) {
  __shared__ uint32_t row_totals[bitmap::kBlocksM];
  const int64_t t = blockIdx.x;
  const uint32_t begin = offsets[t];
  if (offsets[t + 1] == begin) return;  // an empty tile: no words
  uint32_t* words = tiles + begin;
  const int i = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const uint32_t packed = lane_masks(a, t, i, lane);

  // Mask words: lane 4 q gathers byte j of lanes 4 q … 4 q + 3.
  const uint32_t p1 = __shfl_down_sync(0xffffffffu, packed, 1), p2 = __shfl_down_sync(0xffffffffu, packed, 2),
                 p3 = __shfl_down_sync(0xffffffffu, packed, 3);
  if ((lane & 3) == 0) {
    const int q = lane >> 2;
#pragma unroll
    for (int j = 0; j < bitmap::kBlocksK; ++j) {
      const int s = 8 * j;
      words[32 * i + 4 * q + j] = (packed >> s & 0xFFu) | (p1 >> s & 0xFFu) << 8 | (p2 >> s & 0xFFu) << 16 |
                                  (p3 >> s & 0xFFu) << 24;
    }
  }

  // Per block j, this lane's count in 16-bit field j; an inclusive warp scan.
  uint64_t counts = 0;
#pragma unroll
  for (int j = 0; j < bitmap::kBlocksK; ++j) counts |= uint64_t(__popc(packed >> (8 * j) & 0xFFu)) << (16 * j);
  uint64_t inclusive = counts;
#pragma unroll
  for (int delta = 1; delta < 32; delta *= 2) {
    const uint64_t up = __shfl_up_sync(0xffffffffu, inclusive, delta);
    if (lane >= delta) inclusive += up;
  }
  const uint64_t before = inclusive - counts;                         // lanes < this one
  const uint64_t totals = __shfl_sync(0xffffffffu, inclusive, 31);    // the whole row block, per j
  uint32_t row_total = 0, block_start[bitmap::kBlocksK];
#pragma unroll
  for (int j = 0; j < bitmap::kBlocksK; ++j) {
    block_start[j] = row_total;
    row_total += uint32_t(totals >> (16 * j) & 0xFFFFu);
  }
  if (lane == 0) row_totals[i] = row_total;
  __syncthreads();
  uint32_t row_start = 0;
  for (int w = 0; w < i; ++w) row_start += row_totals[w];
  if (lane == 0) reinterpret_cast<uint16_t*>(words + bitmap::kMaskWords)[i] = uint16_t(row_start);

  uint16_t* values = reinterpret_cast<uint16_t*>(words + bitmap::kHeaderWords);
  const int64_t r0 = t / a.tiles_k * bitmap::kTileM, c0 = t % a.tiles_k * bitmap::kTileK;
#pragma unroll
  for (int j = 0; j < bitmap::kBlocksK; ++j) {
    const uint32_t byte = packed >> (8 * j) & 0xFFu;
    const uint32_t first = row_start + block_start[j] + uint32_t(before >> (16 * j) & 0xFFFFu);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      if (!(byte >> e & 1u)) continue;
      const int b = 8 * lane + e;
      const int64_t r = r0 + bitmap::bit_row(i, b), c = c0 + bitmap::bit_col(j, b);
      const Philox4x32 d = draw(a, uint64_t(r) * uint64_t(a.cols) + uint64_t(c));
      values[first + __popc(byte & ((1u << e) - 1u))] = bits16<T>(value(a, d));
    }
  }
}

DrawArgs draw_args(const RandomWeightParams& p, const char* what) {
  SPARSELLM_CHECK_ARG(p.rows > 0 && p.cols > 0, what, ": need a non-empty shape, got ", p.rows, "x", p.cols);
  SPARSELLM_CHECK_ARG(p.density >= 0.0 && p.density <= 1.0, what, ": density ", p.density, " is not in [0, 1]");
  SPARSELLM_CHECK_ARG(std::isfinite(p.std) && std::isfinite(p.offset), what, ": std and offset must be finite");
  SPARSELLM_CHECK_ARG(p.dtype == DType::kFloat16 || p.dtype == DType::kBFloat16, what, ": unknown dtype");
  DrawArgs a{};
  a.rows = p.rows;
  a.cols = p.cols;
  a.tiles_k = (p.cols + bitmap::kTileK - 1) / bitmap::kTileK;
  a.key0 = uint32_t(p.seed);
  a.key1 = uint32_t(p.seed >> 32);
  a.tensor = p.tensor;
  a.threshold = uint64_t(std::ldexp(p.density, 32));
  a.std = p.std;
  a.offset = p.offset;
  return a;
}

int64_t tile_count(const RandomWeightParams& p, const char* what) {
  const int64_t tiles = (p.rows + bitmap::kTileM - 1) / bitmap::kTileM * ((p.cols + bitmap::kTileK - 1) / bitmap::kTileK);
  SPARSELLM_CHECK_ARG(tiles <= INT32_MAX, what, ": ", p.rows, "x", p.cols, " has too many tiles");
  return tiles;
}

}  // namespace

void random_dense(void* out, const RandomWeightParams& p, cudaStream_t stream) {
  const DrawArgs a = draw_args(p, "random_dense");
  SPARSELLM_CHECK_ARG(out != nullptr, "random_dense: null output");
  const int64_t n = p.rows * p.cols;
  const int64_t blocks = std::min<int64_t>(ceil_div(n, kDenseThreads), 65536);
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    random_dense_kernel<T><<<unsigned(blocks), kDenseThreads, 0, stream>>>(static_cast<T*>(out), a, n);
  });
  SPARSELLM_CHECK_LAUNCH("random_dense");
}

void random_bitmap_counts(uint32_t* tile_nnz, const RandomWeightParams& p, cudaStream_t stream) {
  const DrawArgs a = draw_args(p, "random_bitmap_counts");
  SPARSELLM_CHECK_ARG(tile_nnz != nullptr, "random_bitmap_counts: null output");
  const int64_t tiles = tile_count(p, "random_bitmap_counts");
  random_bitmap_counts_kernel<<<unsigned(tiles), kTileThreads, 0, stream>>>(tile_nnz, a);
  SPARSELLM_CHECK_LAUNCH("random_bitmap_counts");
}

void random_bitmap_tiles(uint32_t* tiles, const uint32_t* tile_offsets, const RandomWeightParams& p,
                         cudaStream_t stream) {
  const DrawArgs a = draw_args(p, "random_bitmap_tiles");
  SPARSELLM_CHECK_ARG(tile_offsets != nullptr, "random_bitmap_tiles: null tile offsets");
  const int64_t count = tile_count(p, "random_bitmap_tiles");
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    random_bitmap_tiles_kernel<T><<<unsigned(count), kTileThreads, 0, stream>>>(tiles, tile_offsets, a);
  });
  SPARSELLM_CHECK_LAUNCH("random_bitmap_tiles");
}

}  // namespace sparsellm
