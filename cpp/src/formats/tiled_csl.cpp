// Host encoder and validator of the Tiled-CSL format (sparsellm/tiled_csl.h).
//
// A tile is a header and 8 groups, group g the nonzeros of rows
// [16 g, 16 g + 16): the rows one consumer warp of the kernel expands.
//
// Bank-aware ordering inside a group. The warp reads its group as 16-byte
// vectors: lane l takes vector q = 32·s + l of set s (128 words), and its j-th
// 16-bit store (j = 0..3) writes word 4q + j. One store instruction therefore
// covers the words {128·s + 4·l + j : l = 0..31} — call that set of words a
// run. The encoder fills runs with elements of pairwise distinct banks (bank =
// byte offset / 4 mod 32), taking from the fullest banks first; only when
// fewer than 32 banks still hold elements does a run repeat a bank. The last,
// partial set gets four runs of nearly equal length, so padding never exceeds
// 3 words a group.
#include "sparsellm/tiled_csl.h"

#include <algorithm>
#include <array>
#include <bitset>

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

// Nonzeros and words of tile (tr, tc): no words when empty, else the header
// and each group padded to 16 bytes.
detail::TileSize tile_size(const uint16_t* dense, int64_t m, int64_t k, int64_t tr, int64_t tc) {
  detail::TileSize size;
  for (int g = 0; g < kGroups && tr * kTileM + g * kGroupRows < m; ++g) {
    const int64_t n = detail::tile_nnz<kGroupRows, kTileK>(dense, m, k, tr * kGroups + g, tc);
    size.nnz += n;
    size.words += padded_words(n);
  }
  if (size.nnz > 0) size.words += kHeaderWords;
  return size;
}

// Writes one tile's words (already sized by tile_size) into `out`; one
// encoder per thread, its scratch reused from tile to tile.
struct TileEncoder {
  TileEncoder(const uint16_t* dense, int64_t m, int64_t k) : dense(dense), m(m), k(k) {
    scratch.reserve(kGroupRows * kTileK);
    by_bank.reserve(kGroupRows * kTileK);
  }
  void operator()(int64_t tr, int64_t tc, uint32_t* out);
  // Writes the words of tile rows [row0, row1) into out in bank-aware order; returns the count (padded).
  int encode_group(int64_t r0, int64_t c0, int row0, int row1, int cols, uint32_t* out);

  const uint16_t* dense;
  int64_t m, k;
  std::vector<uint32_t> scratch, by_bank;
};

int TileEncoder::encode_group(int64_t r0, int64_t c0, int row0, int row1, int cols, uint32_t* out) {
  // Counting sort of the group's nonzeros by bank; within a bank, row-major order.
  std::array<int, kBanks + 1> start{};
  scratch.clear();
  for (int r = row0; r < row1; ++r) {
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
  by_bank.resize(nnz);
  {
    std::array<int, kBanks> fill{};
    for (uint32_t w : scratch) {
      const int b = bank_of(w >> 16);
      by_bank[start[b] + fill[b]++] = w;
    }
  }
  std::array<int, kBanks> cursor{}, left{};
  for (int b = 0; b < kBanks; ++b) left[b] = start[b + 1] - start[b];

  // Run lengths: full groups of 4 runs × 32, then a balanced last set.
  const int full_sets = nnz / 128, rest = nnz % 128;
  const int last_len = (rest + 3) / 4;  // vectors in the last set
  std::array<int, kBanks> order{};
  for (int b = 0; b < kBanks; ++b) order[b] = b;

  const int sets = full_sets + (rest > 0);
  for (int g = 0; g < sets; ++g) {
    for (int j = 0; j < 4; ++j) {
      const int len = g < full_sets ? 32 : rest / 4 + (j < rest % 4);
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
      const int vectors = g < full_sets ? 32 : last_len;
      for (int l = len; l < vectors; ++l)  // padding: value 0, a scratch slot of its own bank
        out[128 * g + 4 * l + j] = uint32_t(kPadBase + 4 * l) << 16;
    }
  }
  return int(padded_words(nnz));
}

void TileEncoder::operator()(int64_t tr, int64_t tc, uint32_t* out) {
  const int64_t r0 = tr * kTileM, c0 = tc * kTileK;
  const int rows = int(std::min<int64_t>(kTileM, m - r0)), cols = int(std::min<int64_t>(kTileK, k - c0));
  int end = 0;
  for (int g = 0; g < kGroups; ++g) {  // header: group_end[g] in half g % 2 of word g / 2 (out is zero-filled)
    const int row0 = std::min(rows, g * kGroupRows), row1 = std::min(rows, row0 + kGroupRows);
    end += encode_group(r0, c0, row0, row1, cols, out + kHeaderWords + end);
    out[g / 2] |= uint32_t(end) << (16 * (g % 2));
  }
}

}  // namespace

TiledCslHost encode_tiled_csl(const uint16_t* dense, int64_t m, int64_t k, DType dtype, int threads) {
  return detail::encode_tiles<TiledCslHost, TileEncoder, kTileM, kTileK>(dense, m, k, dtype, threads, tile_size,
                                                                          &TiledCslHost::words, "encode_tiled_csl");
}

int64_t validate_tiled_csl(const uint32_t* offsets, const uint32_t* words, int64_t num_words, int64_t m, int64_t k) {
  auto fail = [](auto&&... parts) { throw FormatError(detail::concat("Tiled-CSL: ", parts...)); };
  std::bitset<kTileM * kTileK> seen;
  int64_t stored = 0;
  auto check_tile = [&](int64_t t, uint32_t b, uint32_t e, int rows, int cols) {
    if (e < b || e - b > uint32_t(kMaxTileWords))
      fail("tile ", t, " spans words [", b, ", ", e, "): more than a full tile");
    if (e == b) return;
    if (e - b < uint32_t(kHeaderWords)) fail("tile ", t, " is shorter than its header");
    auto group_end = [&](int g) { return g < 0 ? 0u : (words[b + g / 2] >> (16 * (g % 2))) & 0xFFFF; };
    if (e - b != kHeaderWords + group_end(kGroups - 1))
      fail("tile ", t, " holds ", e - b, " words but its header gives ", kHeaderWords + group_end(kGroups - 1));
    seen.reset();
    int64_t nonzeros = 0;
    for (int g = 0; g < kGroups; ++g) {
      const uint32_t gb = group_end(g - 1), ge = group_end(g);
      if (ge < gb || (ge - gb) % kWordsPerVector != 0 || ge - gb > uint32_t(kGroupRows * kTileK + 3))
        fail("tile ", t, " group ", g, " spans [", gb, ", ", ge, "): not a 16-byte multiple within a group's capacity");
      int padding = 0;
      for (uint32_t i = b + kHeaderWords + gb; i < b + kHeaderWords + ge; ++i) {
        const uint32_t off = words[i] >> 16;
        if (off >= uint32_t(kPadBase)) {
          if (off >= uint32_t(kPadBase + 128) || (words[i] & 0xFFFF) != 0 || ++padding >= kWordsPerVector)
            fail("word ", i, " of tile ", t, " is a malformed or extra padding word");
          continue;
        }
        const int row = int(off / 128), col = int((((off % 128) / 16) ^ (row & 7)) * 8 + (off % 16) / 2);
        if (off % 2 != 0 || row >= rows || col >= cols)
          fail("word ", i, " of tile ", t, " points outside the matrix (row ", row, ", column ", col, ")");
        if (row / kGroupRows != g) fail("word ", i, " of tile ", t, " (row ", row, ") is not in group ", g);
        if (seen[row * kTileK + col]) fail("word ", i, " of tile ", t, " repeats element (", row, ", ", col, ")");
        seen[row * kTileK + col] = true;
        ++nonzeros;
      }
    }
    if (nonzeros == 0) fail("tile ", t, " holds words but no nonzero");
    stored += nonzeros;
  };
  detail::validate_tiles<kTileM, kTileK>(offsets, num_words, m, k, fail, check_tile);
  return stored;
}

}  // namespace sparsellm
