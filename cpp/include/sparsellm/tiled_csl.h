// Tiled-CSL: the sparse weight format of the load-as-sparse, compute-as-dense
// SpMM (docs/formats.md describes it byte by byte).
//
// W[M, K] is cut into tiles of kTileM × kTileK (rows × columns), tile (r, c)
// covering rows [r·kTileM, …) and columns [c·kTileK, …); tiles are numbered
// row-major, t = r · tiles_k + c. Each nonzero is one 32-bit word:
//
//   bits  0..15  the value's fp16 / bf16 bits
//   bits 16..31  the byte offset of the element inside the kernel's
//                shared-memory tile (row-major rows of 128 bytes, 16-byte
//                chunks XOR-swizzled by row & 7), or ≥ kTileBytes for a
//                padding word whose value is 0
//
// A tile holding nonzeros starts with a header of kHeaderWords words:
// group_end[kGroups] (uint16), the end of row block g's group of words,
// counted from the first word after the header. Group g — the nonzeros of
// tile rows [16 g, 16 g + 16) — spans [group_end[g − 1], group_end[g])
// (group_end[−1] = 0), padded to a multiple of 4 words (16 bytes), its words
// ordered so that one warp's scattered 16-bit stores hit distinct
// shared-memory banks wherever the group allows it. A tile without nonzeros
// holds no words. tile_offsets[t] is the index of tile t's first word;
// tile_offsets[T] the total. Rows and columns past M and K are empty.
#pragma once

#include <cstdint>
#include <vector>

#include "sparsellm/types.h"

namespace sparsellm {

namespace tiled_csl {
constexpr int kVersion = 2;
constexpr int kTileM = 128;
constexpr int kTileK = 64;
constexpr int kTileBytes = kTileM * kTileK * 2;  // 16 KiB of dense fp16/bf16
constexpr int kPadBase = kTileBytes;             // padding words point at [kPadBase, kPadBase + 128)
constexpr int kWordsPerVector = 4;               // groups are padded to 16-byte vectors
constexpr int kGroupRows = 16;                   // rows of a group (one consumer warp's row block)
constexpr int kGroups = kTileM / kGroupRows;     // 8 groups per tile
constexpr int kHeaderWords = kGroups / 2;        // group_end[8], uint16
constexpr int kMaxTileWords = kHeaderWords + kTileM * kTileK + kGroups * (kWordsPerVector - 1);
}  // namespace tiled_csl

// A Tiled-CSL matrix in host memory, as the encoder writes it.
struct TiledCslHost {
  int64_t m = 0, k = 0;
  DType dtype = DType::kFloat16;
  int64_t nnz = 0;                      // nonzeros, padding words not counted
  std::vector<uint32_t> tile_offsets;   // [tiles_m · tiles_k + 1], in words
  std::vector<uint32_t> words;          // [tile_offsets.back()]

  int64_t tiles_m() const { return (m + tiled_csl::kTileM - 1) / tiled_csl::kTileM; }
  int64_t tiles_k() const { return (k + tiled_csl::kTileK - 1) / tiled_csl::kTileK; }
};

// Encodes a dense row-major matrix of 16-bit floats (the raw bits; a value is
// zero when its bits other than the sign are zero). Deterministic whatever
// the thread count; `threads` ≤ 0 uses every hardware thread.
TiledCslHost encode_tiled_csl(const uint16_t* dense, int64_t m, int64_t k, DType dtype, int threads = 0);

// Checks the invariants of an encoded matrix (offsets monotone, headers and
// groups consistent and 4-aligned, every word's position inside its group's
// rows of its tile or a zero padding word, no element twice, sizes consistent
// with m and k). Returns the nonzeros stored; throws FormatError naming the
// first violation.
int64_t validate_tiled_csl(const uint32_t* tile_offsets, const uint32_t* words, int64_t num_words, int64_t m, int64_t k);

}  // namespace sparsellm
