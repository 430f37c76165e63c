// Split 2:4: unstructured sparsity multiplied on the sparse tensor cores
// (mma.sp, 2:4) — docs/formats.md describes it byte by byte.
//
// W = P + R. In every group of four consecutive elements of a row (columns
// 4 g .. 4 g + 3), P keeps the group's first two nonzeros and R the rest: P
// is 2:4 sparse, R holds only the third and fourth nonzeros of the groups that
// have them (at random masks 0.7% of the elements at 80% sparsity, 2.3% at
// 70%, 9.4% at 50%). Per 16 × 32 block, mma.m16n8k32's sparse A operand is a
// 16 × 16 matrix of slots (slot column c: slot c % 2 of group c / 2), stored
// as the lane registers it is loaded into, whether a slot holds a nonzero or
// not (one 16-byte load a lane and block; no decode), plus the 2-bit column of
// each slot in its group. R is a list of (position, value) per 16-row block.
// A third nonzero of a group sits at column 2 or 3 of it and a fourth at 3, so
// R is 2:4 sparse with every group's indices (2, 3): its entries are scattered
// on chip into slots laid out as P's and multiplied on mma.sp with constant
// metadata. A tile that would take more words this way than dense is stored
// dense.
//
// Tiles of kTileM × kTileK = 128 × 64, numbered row-major as in the other
// formats (same stream-K plan and workspace). Row block i = tile rows
// [16 i, 16 i + 16), k32 block j = tile columns [32 j, 32 j + 32).
//
// A group's slots and indices (index 0 in bits 0–1 of its nibble, index 1 in
// bits 2–3; index 0 < index 1 always, as mma.sp::ordered_metadata requires):
//   no nonzero:                 both slots 0, indices (0, 1)
//   one nonzero at column e < 3: slot 0 = it, slot 1 = 0, indices (e, 3)
//   one nonzero at column 3:     slot 0 = 0, slot 1 = it, indices (2, 3)
//   two or more, at e0 < e1 < …: slots = the first two, indices (e0, e1); the
//                                rest go to R
//
// A non-empty tile, in 32-bit little-endian words:
//   word 0            kDenseTile, or the residual count R of a split tile
//   words [1, 5)      uint16 residual_start[8]: index of row block i's first
//                     residual entry (residual_start[0] = 0; row block i's
//                     entries end at residual_start[i + 1], row block 7's at R)
//   words [5, 8)      zero
// split tile:
//   words [8, 264)    indices: word kIndexWord + 32 i + 4 g + 2 p + j is the
//                     mma.sp metadata register of lane 4 g + p (p = 0, 1) for
//                     row block i, block j: nibble q (bits 4 q ..) of the low
//                     half indexes group 4 p + q of row 16 i + g, of the high
//                     half the same group of row 16 i + g + 8
//   words [264, 2312) slots: word kSlotWord + 4 (32 (2 i + j) + l) + r is lane
//                     l's A register r of row block i, block j: slot bits
//                     8 l + 2 r (low half) and 8 l + 2 r + 1 (high half), slot
//                     bit b at row bitmap::bit_row(0, b), slot column
//                     bitmap::bit_col(0, b)
//   words [2312, 2312 + R) residual entries, by row block: value | position
//                     << 16, position = residual_position(r, c) for row r
//                     (0–15) of the row block and tile column c: the byte, in
//                     a 1 KiB tile laid out as the row block's two slot blocks
//                     (512 j + 16 l + 4 r' + 2 h for lane l's register r',
//                     half h, of block j), of the slot the element takes when
//                     its group's indices are (2, 3)
//   zero-padded to 16 bytes
// dense tile (when a split one would take more than kDenseTileWords):
//   words [8, 32)     zero
//   words [32, 4128)  tile row r at word 32 + 32 r, its 16-byte chunk c
//                     (columns 8 c .. 8 c + 7) at chunk c ^ (r % 8)
//
// A tile without nonzeros is empty (0 words); tile_offsets as in the other
// formats; every tile is a multiple of 16 bytes.
#pragma once

#include <cstdint>
#include <vector>

#include "sparsellm/types.h"

#ifdef __CUDACC__
#define SPARSELLM_SPLIT24_HD __host__ __device__
#else
#define SPARSELLM_SPLIT24_HD
#endif

namespace sparsellm {

namespace split24 {
constexpr int kVersion = 2;  // 2: residual positions in slot order (1: in a dense 16 × 64 tile)
constexpr int kTileM = 128;
constexpr int kTileK = 64;
constexpr uint32_t kDenseTile = 0xFFFFFFFFu;
constexpr int kResidualStartWord = 1;
constexpr int kIndexWord = 8;
constexpr int kSlotWord = kIndexWord + 256;                    // 264
constexpr int kResidualWord = kSlotWord + kTileM * kTileK / 4;  // 2312: slots take half the tile's halves
constexpr int kDenseWord = 32;                                  // 128-byte aligned rows
constexpr int kDenseTileWords = kDenseWord + kTileM * kTileK / 2;  // 4128
constexpr int kMaxTileWords = kDenseTileWords;
constexpr int kWordsPerVector = 4;

// Words of a split tile with r residual entries.
SPARSELLM_SPLIT24_HD constexpr int64_t split_tile_words(int64_t r) {
  return (kResidualWord + r + kWordsPerVector - 1) / kWordsPerVector * kWordsPerVector;
}
// Words of a tile with nnz nonzeros, r of them residual: 0 when empty, the
// split tile when it is no larger than the dense one.
SPARSELLM_SPLIT24_HD constexpr int64_t tile_words(int64_t nnz, int64_t r) {
  return nnz == 0 ? 0 : split_tile_words(r) <= kDenseTileWords ? split_tile_words(r) : kDenseTileWords;
}
constexpr uint32_t kResidualIndices = 0xEEEEEEEEu;  // R's mma.sp metadata: every group's indices (2, 3)
constexpr int kResidualTileBytes = 2 * 512;         // R's slots of a row block, both k32 blocks

// Byte position of (row r, column c) of a row block in R's slot tile (see
// above); c % 4 is 2 or 3, as for every residual. Slot bit b = 8 l + e of the
// bitmap order sits at row (l / 4) + 8 ((e / 2) % 2), slot column
// 2 (l % 4) + e % 2 + 8 (e / 4), and slot column s is slot s % 2 of group s / 2.
SPARSELLM_SPLIT24_HD constexpr uint32_t residual_position(int r, int c) {
  const int s = 2 * (c % 32 / 4) + c % 4 - 2;  // slot column in the k32 block
  const int lane = 4 * (r % 8) + s % 8 / 2, e = 2 * (r / 8 + 2 * (s / 8)) + s % 2;
  return uint32_t(512 * (c / 32) + 2 * (8 * lane + e));
}
// The row (0–15) and tile column of residual position `pos` (its inverse).
SPARSELLM_SPLIT24_HD constexpr int residual_row(uint32_t pos) {
  return int(pos / 2 % 256 / 32 + 8 * (pos / 4 % 2));
}
SPARSELLM_SPLIT24_HD constexpr int residual_col(uint32_t pos) {
  const int b = int(pos / 2 % 256), s = 2 * (b / 8 % 4) + b % 2 + 8 * (b / 4 % 2);
  return int(32 * (pos / 512)) + 4 * (s / 2) + 2 + s % 2;
}
}  // namespace split24

// A split 2:4 matrix in host memory, as the encoder writes it.
struct Split24Host {
  int64_t m = 0, k = 0;
  DType dtype = DType::kFloat16;
  int64_t nnz = 0;
  int64_t residual = 0;                // nonzeros in residual entries
  std::vector<uint32_t> tile_offsets;  // [tiles_m · tiles_k + 1], in words
  std::vector<uint32_t> data;          // [tile_offsets.back()] the tiles

  int64_t tiles_m() const { return (m + split24::kTileM - 1) / split24::kTileM; }
  int64_t tiles_k() const { return (k + split24::kTileK - 1) / split24::kTileK; }
};

// Encodes a dense row-major matrix of 16-bit floats (raw bits; a value is zero
// when its bits other than the sign are zero). Deterministic whatever the
// thread count; `threads` ≤ 0 uses every hardware thread.
Split24Host encode_split24(const uint16_t* dense, int64_t m, int64_t k, DType dtype, int threads = 0);

// Checks every invariant of docs/formats.md (offsets, tile kinds and sizes,
// residual starts, the slot and index rule of every group, residual entries
// after their group's two slots, nothing outside the matrix, zero padding).
// Returns the nonzeros stored; throws FormatError naming the first violation.
int64_t validate_split24(const uint32_t* tile_offsets, const uint32_t* data, int64_t num_words, int64_t m, int64_t k);

}  // namespace sparsellm

#undef SPARSELLM_SPLIT24_HD
