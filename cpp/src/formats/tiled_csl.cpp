// Host encoder and validator of the Tiled-CSL format (sparsellm/tiled_csl.h).
//
// Bank-aware ordering. The kernel reads a tile's words as 16-byte vectors:
// lane l of a warp takes vector q = 32·g + l of group g, and its j-th 16-bit
// store (j = 0..3) writes word 4q + j. One store instruction therefore covers
// the words {128·g + 4·l + j : l = 0..31} — call that set a run. The encoder
// fills runs with elements of pairwise distinct banks (bank = byte offset / 4
// mod 32), taking from the fullest banks first; only when fewer than 32 banks
// still hold elements does a run repeat a bank. The last, partial group gets
// four runs of nearly equal length, so padding never exceeds 3 words a tile.
#include "sparsellm/tiled_csl.h"

#include <algorithm>
#include <array>

#include "common/check.h"
#include "formats/tile_grid.h"

namespace sparsellm {
namespace {

using namespace tiled_csl;
constexpr int kBanks = 32;

using detail::is_nonzero;

// Byte offset of element (row, col) of a tile in the kernel's shared-memory
// layout: rows of 128 bytes, 16-byte chunk index XOR (row & 7).
inline uint32_t smem_offset(int row, int col) {
  return uint32_t(row * 128 + (((col >> 3) ^ (row & 7)) << 4) + ((col & 7) << 1));
}

inline int bank_of(uint32_t offset) { return int((offset >> 2) & (kBanks - 1)); }

int64_t padded_words(int64_t nnz) { return (nnz + kWordsPerVector - 1) / kWordsPerVector * kWordsPerVector; }

// Writes one tile's words (already sized: padded_words(nnz)) into `out`; one
// encoder per thread, its scratch reused from tile to tile.
struct TileEncoder {
  TileEncoder(const uint16_t* dense, int64_t m, int64_t k) : dense(dense), m(m), k(k) {
    scratch.reserve(kTileM * kTileK);
  }
  void operator()(int64_t tr, int64_t tc, uint32_t* out);

  const uint16_t* dense;
  int64_t m, k;
  std::vector<uint32_t> scratch;
};

void TileEncoder::operator()(int64_t tr, int64_t tc, uint32_t* out) {
  const int64_t r0 = tr * kTileM, c0 = tc * kTileK;
  const int rows = int(std::min<int64_t>(kTileM, m - r0)), cols = int(std::min<int64_t>(kTileK, k - c0));

  // Counting sort of the tile's nonzeros by bank; within a bank, row-major order.
  std::array<int, kBanks + 1> start{};
  scratch.clear();
  for (int r = 0; r < rows; ++r) {
    const uint16_t* row = dense + (r0 + r) * k + c0;
    for (int c = 0; c < cols; ++c)
      if (is_nonzero(row[c])) {
        const uint32_t word = (smem_offset(r, c) << 16) | row[c];
        scratch.push_back(word);
        ++start[bank_of(word >> 16) + 1];
      }
  }
  const int nnz = int(scratch.size());
  for (int b = 0; b < kBanks; ++b) start[b + 1] += start[b];
  std::vector<uint32_t> by_bank(nnz);
  {
    std::array<int, kBanks> fill{};
    for (uint32_t w : scratch) {
      const int b = bank_of(w >> 16);
      by_bank[start[b] + fill[b]++] = w;
    }
  }
  std::array<int, kBanks> cursor{}, left{};
  for (int b = 0; b < kBanks; ++b) left[b] = start[b + 1] - start[b];

  // Run lengths: full groups of 4 runs × 32, then a balanced last group.
  const int full_groups = nnz / 128, rest = nnz % 128;
  const int last_len = (rest + 3) / 4;  // vectors in the last group
  std::array<int, kBanks> order{};
  for (int b = 0; b < kBanks; ++b) order[b] = b;

  const int groups = full_groups + (rest > 0);
  for (int g = 0; g < groups; ++g) {
    for (int j = 0; j < 4; ++j) {
      const int len = g < full_groups ? 32 : rest / 4 + (j < rest % 4);
      // Fullest banks first; ties by bank index (deterministic).
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return left[a] > left[b]; });
      int taken = 0;
      while (taken < len) {
        for (int i = 0; i < kBanks && taken < len; ++i) {
          const int b = order[i];
          if (left[b] == 0) continue;
          out[128 * g + 4 * taken + j] = by_bank[start[b] + cursor[b]++];
          --left[b];
          ++taken;
        }
      }
      const int vectors = g < full_groups ? 32 : last_len;
      for (int l = len; l < vectors; ++l)  // padding: value 0, a scratch slot of its own bank
        out[128 * g + 4 * l + j] = uint32_t(kPadBase + 4 * l) << 16;
    }
  }
}

}  // namespace

TiledCslHost encode_tiled_csl(const uint16_t* dense, int64_t m, int64_t k, DType dtype, int threads) {
  return detail::encode_tiles<TiledCslHost, TileEncoder, kTileM, kTileK>(dense, m, k, dtype, threads, padded_words,
                                                                          &TiledCslHost::words, "encode_tiled_csl");
}

void validate_tiled_csl(const uint32_t* offsets, const uint32_t* words, int64_t num_words, int64_t m, int64_t k) {
  auto fail = [](auto&&... parts) { throw FormatError(detail::concat("Tiled-CSL: ", parts...)); };
  auto check_tile = [&](int64_t t, uint32_t b, uint32_t e, int rows, int cols) {
    if (e < b || (e - b) % kWordsPerVector != 0 || e - b > uint32_t(kTileM * kTileK + 3))
      fail("tile ", t, " spans words [", b, ", ", e, "): not a 16-byte multiple within one tile's capacity");
    for (uint32_t i = b; i < e; ++i) {
      const uint32_t off = words[i] >> 16;
      if (off >= uint32_t(kPadBase)) {
        if (off >= uint32_t(kPadBase + 128) || (words[i] & 0xFFFF) != 0)
          fail("word ", i, " of tile ", t, " is a malformed padding word");
        continue;
      }
      const int row = int(off / 128), col = int((((off % 128) / 16) ^ (row & 7)) * 8 + (off % 16) / 2);
      if (off % 2 != 0 || row >= rows || col >= cols)
        fail("word ", i, " of tile ", t, " points outside the matrix (row ", row, ", column ", col, ")");
    }
  };
  detail::validate_tiles<kTileM, kTileK>(offsets, num_words, m, k, fail, check_tile);
}

}  // namespace sparsellm
