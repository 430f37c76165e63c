// Bitmap: a sparse weight format of ≈ 2(1 − s) + 1/8 bytes per element at
// sparsity s (docs/formats.md describes it byte by byte).
//
// W[M, K] is cut into tiles of kTileM × kTileK = 128 × 64, numbered row-major
// (t = r · tiles_k + c), exactly as Tiled-CSL, so both formats share the
// stream-K plan (sparsellm/spmm.h). A tile is 8 × 4 blocks of 16 × 16: block
// (i, j) covers tile rows [16 i, 16 i + 16) and columns [16 j, 16 j + 16), one
// A operand of mma.m16n8k16. Its 256-bit mask holds bit b = 8 l + e for the
// element that lane l of a warp holds as its e-th A value:
//
//   row = 16 i + (l >> 2) + 8 · ((e >> 1) & 1),   col = 16 j + 2 · (l & 3) + (e & 1) + 8 · (e >> 2)
//
// and the block's nonzero values follow in bit order, so lane l's values are
// contiguous, starting at the popcount of the mask bits below 8 l.
//
// A non-empty tile is, in 32-bit little-endian words:
//
//   words [0, 256)    masks: row block i in words [32 i, 32 i + 32); word
//                     32 i + 4 q + j is bits [32 q, 32 q + 32) of block (i, j)'s
//                     mask (one 16-byte load gives a lane quad its words of
//                     the row block's four masks)
//   words [256, 260)  row_start[8]: uint16, the index of row block i's first
//                     value among the tile's values (row_start[0] = 0)
//   words [260, …)    the values, 16-bit, row block by row block, block j by
//                     block j, in mask bit order; zero-padded to 16 bytes
//
// A tile without nonzeros is empty (0 words). tile_offsets[t] is the index of
// tile t's first word; tile_offsets[T] the total; every tile is a multiple of
// 4 words (16 bytes), so tiles are aligned for bulk copies.
#pragma once

#include <cstdint>
#include <vector>

#include "sparsellm/types.h"

#ifdef __CUDACC__
#define SPARSELLM_BITMAP_HD __host__ __device__
#else
#define SPARSELLM_BITMAP_HD
#endif

namespace sparsellm {

namespace bitmap {
constexpr int kVersion = 1;
constexpr int kTileM = 128;
constexpr int kTileK = 64;
constexpr int kBlock = 16;                                // blocks are 16 × 16
constexpr int kBlocksM = kTileM / kBlock;                 // 8 row blocks per tile
constexpr int kBlocksK = kTileK / kBlock;                 // 4 blocks per row block
constexpr int kMaskWords = kBlocksM * kBlocksK * 8;       // 256 words = 1 KiB
constexpr int kRowStartWords = kBlocksM / 2;              // 8 uint16
constexpr int kHeaderWords = kMaskWords + kRowStartWords;  // 260 words
constexpr int kMaxTileWords = kHeaderWords + kTileM * kTileK / 2;  // 4356 words (a full tile)
constexpr int kWordsPerVector = 4;

// Tile row and column of mask bit b (= 8 l + e) of block (i, j).
SPARSELLM_BITMAP_HD constexpr int bit_row(int i, int b) { return kBlock * i + (b >> 5) + 8 * ((b >> 1) & 1); }
SPARSELLM_BITMAP_HD constexpr int bit_col(int j, int b) {
  return kBlock * j + 2 * ((b >> 3) & 3) + (b & 1) + 8 * ((b >> 2) & 1);
}
// Words of a tile holding nnz nonzeros (0 for an empty tile).
SPARSELLM_BITMAP_HD constexpr int64_t tile_words(int64_t nnz) {
  return nnz == 0 ? 0
                  : (kHeaderWords + (nnz + 1) / 2 + kWordsPerVector - 1) / kWordsPerVector * kWordsPerVector;
}
}  // namespace bitmap

// A bitmap matrix in host memory, as the encoder writes it.
struct BitmapHost {
  int64_t m = 0, k = 0;
  DType dtype = DType::kFloat16;
  int64_t nnz = 0;
  std::vector<uint32_t> tile_offsets;  // [tiles_m · tiles_k + 1], in words
  std::vector<uint32_t> data;          // [tile_offsets.back()] the tiles

  int64_t tiles_m() const { return (m + bitmap::kTileM - 1) / bitmap::kTileM; }
  int64_t tiles_k() const { return (k + bitmap::kTileK - 1) / bitmap::kTileK; }
};

// Encodes a dense row-major matrix of 16-bit floats (raw bits; a value is zero
// when its bits other than the sign are zero). Deterministic whatever the
// thread count; `threads` ≤ 0 uses every hardware thread.
BitmapHost encode_bitmap(const uint16_t* dense, int64_t m, int64_t k, DType dtype, int threads = 0);

// Checks every invariant of docs/formats.md (offsets, tile sizes, row starts
// against the masks, no bit outside the matrix, nonzero values, zero padding).
// `tile_offsets` holds tiles_m · tiles_k + 1 entries. Returns the nonzeros
// stored (set mask bits); throws FormatError naming the first violation.
int64_t validate_bitmap(const uint32_t* tile_offsets, const uint32_t* data, int64_t num_words, int64_t m, int64_t k);

}  // namespace sparsellm

#undef SPARSELLM_BITMAP_HD
