// Host encoder and validator of the split 2:4 format (sparsellm/split24.h).
//
// As the other encoders: size every tile (its nonzeros and residual count
// give its words), then fill each tile at its offset, one thread a tile row.
#include "sparsellm/split24.h"

#include <algorithm>
#include <array>

#include "common/check.h"
#include "formats/tile_grid.h"
#include "sparsellm/bitmap.h"

namespace sparsellm {
namespace {

using namespace split24;
using detail::is_nonzero;

constexpr int kGroups = kTileK / 4;  // groups of four columns in a tile row

// A tile copied out of W (zeros past M and K).
using TileValues = std::array<uint16_t, kTileM * kTileK>;

TileValues copy_tile(const uint16_t* dense, int64_t m, int64_t k, int64_t tr, int64_t tc) {
  const int64_t r0 = tr * kTileM, c0 = tc * kTileK;
  const int rows = int(std::min<int64_t>(kTileM, m - r0)), cols = int(std::min<int64_t>(kTileK, k - c0));
  TileValues tile{};
  for (int r = 0; r < rows; ++r) std::copy_n(dense + (r0 + r) * k + c0, cols, tile.data() + r * kTileK);
  return tile;
}

// Group g of tile row `row` as the format stores it: the two slots, the index
// nibble, and the columns of its residual nonzeros.
struct Group {
  uint16_t slot[2] = {0, 0};
  uint32_t nibble = 0;
  int residual[2] = {0, 0};
  int residual_count = 0;
};

Group split_group(const TileValues& tile, int row, int g) {
  int cols[4], n = 0;
  for (int e = 0; e < 4; ++e)
    if (is_nonzero(tile[row * kTileK + 4 * g + e])) cols[n++] = e;
  Group out;
  auto at = [&](int e) { return tile[row * kTileK + 4 * g + e]; };
  if (n == 0) {
    out.nibble = 0 | 1 << 2;
  } else if (n == 1 && cols[0] < 3) {
    out.slot[0] = at(cols[0]);
    out.nibble = uint32_t(cols[0]) | 3u << 2;
  } else if (n == 1) {
    out.slot[1] = at(3);
    out.nibble = 2u | 3u << 2;
  } else {
    out.slot[0] = at(cols[0]);
    out.slot[1] = at(cols[1]);
    out.nibble = uint32_t(cols[0]) | uint32_t(cols[1]) << 2;
    for (int e = 2; e < n; ++e) out.residual[out.residual_count++] = 4 * g + cols[e];
  }
  return out;
}

detail::TileSize size_tile(const uint16_t* dense, int64_t m, int64_t k, int64_t tr, int64_t tc) {
  const TileValues tile = copy_tile(dense, m, k, tr, tc);
  int64_t nnz = 0, residual = 0;
  for (int row = 0; row < kTileM; ++row)
    for (int g = 0; g < kGroups; ++g) {
      int n = 0;
      for (int e = 0; e < 4; ++e) n += is_nonzero(tile[row * kTileK + 4 * g + e]);
      nnz += n;
      residual += std::max(0, n - 2);
    }
  return {nnz, tile_words(nnz, residual)};
}

// Writes one non-empty tile (out sized by tile_words, zero-filled).
struct TileEncoder {
  const uint16_t* dense;
  int64_t m, k;
  void operator()(int64_t tr, int64_t tc, uint32_t* out) const;
};

void TileEncoder::operator()(int64_t tr, int64_t tc, uint32_t* out) const {
  const TileValues tile = copy_tile(dense, m, k, tr, tc);
  std::array<Group, kTileM * kGroups> groups;
  int64_t residual = 0;
  for (int row = 0; row < kTileM; ++row)
    for (int g = 0; g < kGroups; ++g) {
      groups[row * kGroups + g] = split_group(tile, row, g);
      residual += groups[row * kGroups + g].residual_count;
    }
  if (split_tile_words(residual) > kDenseTileWords) {
    out[0] = kDenseTile;
    uint16_t* rows = reinterpret_cast<uint16_t*>(out + kDenseWord);
    for (int r = 0; r < kTileM; ++r)
      for (int c = 0; c < kTileK; ++c) {
        const uint16_t v = tile[r * kTileK + c];
        rows[64 * r + 8 * ((c / 8) ^ (r % 8)) + c % 8] = is_nonzero(v) ? v : uint16_t(0);  // zeros as +0
      }
    return;
  }
  out[0] = uint32_t(residual);
  uint16_t* residual_start = reinterpret_cast<uint16_t*>(out + kResidualStartWord);
  uint32_t* entries = out + kResidualWord;
  int count = 0;
  for (int i = 0; i < kTileM / 16; ++i) {
    residual_start[i] = uint16_t(count);
    for (int r = 0; r < 16; ++r)
      for (int g = 0; g < kGroups; ++g) {
        const Group& group = groups[(16 * i + r) * kGroups + g];
        for (int e = 0; e < group.residual_count; ++e) {
          const int c = group.residual[e];
          entries[count++] = uint32_t(tile[(16 * i + r) * kTileK + c]) | residual_position(r, c) << 16;
        }
      }
    for (int j = 0; j < 2; ++j) {
      for (int g = 0; g < 8; ++g)
        for (int p = 0; p < 2; ++p) {
          uint32_t word = 0;
          for (int q = 0; q < 4; ++q)
            for (int h = 0; h < 2; ++h)
              word |= groups[(16 * i + g + 8 * h) * kGroups + 8 * j + 4 * p + q].nibble << (16 * h + 4 * q);
          out[kIndexWord + 32 * i + 4 * g + 2 * p + j] = word;
        }
      uint16_t* slots = reinterpret_cast<uint16_t*>(out + kSlotWord + 128 * (2 * i + j));
      for (int b = 0; b < 256; ++b) {
        const int c = bitmap::bit_col(0, b);
        slots[b] = groups[(16 * i + bitmap::bit_row(0, b)) * kGroups + 8 * j + c / 2].slot[c % 2];
      }
    }
  }
}

}  // namespace

Split24Host encode_split24(const uint16_t* dense, int64_t m, int64_t k, DType dtype, int threads) {
  Split24Host out = detail::encode_tiles<Split24Host, TileEncoder, kTileM, kTileK>(
      dense, m, k, dtype, threads, size_tile, &Split24Host::data, "encode_split24");
  for (size_t t = 0; t + 1 < out.tile_offsets.size(); ++t)
    if (out.tile_offsets[t + 1] > out.tile_offsets[t] && out.data[out.tile_offsets[t]] != kDenseTile)
      out.residual += out.data[out.tile_offsets[t]];
  return out;
}

int64_t validate_split24(const uint32_t* offsets, const uint32_t* data, int64_t num_words, int64_t m, int64_t k) {
  auto fail = [](auto&&... parts) { throw FormatError(detail::concat("split24: ", parts...)); };
  int64_t stored = 0;
  auto check_tile = [&](int64_t t, uint32_t b, uint32_t e, int rows, int cols) {
    if (e < b || e - b > uint32_t(kMaxTileWords)) fail("tile ", t, " spans words [", b, ", ", e, ")");
    if (e == b) return;
    const uint32_t* tile = data + b;
    const int64_t words = e - b;
    if (words < kWordsPerVector) fail("tile ", t, " is shorter than its header");
    for (int w = kResidualStartWord + 4; w < kIndexWord; ++w)
      if (tile[w] != 0) fail("tile ", t, ": header word ", w, " is not zero");
    // The tile's values, decoded into a row-major 128 × 64 array.
    TileValues values{};
    int64_t nnz = 0, residual = 0;
    auto place = [&](int r, int c, uint16_t v, const char* what) {
      if (!is_nonzero(v)) return;
      if (r >= rows || c >= cols) fail("tile ", t, " has a ", what, " nonzero outside the matrix (row ", r, ", column ", c, ")");
      values[r * kTileK + c] = v;
      ++nnz;
    };
    if (tile[0] == kDenseTile) {
      if (words != kDenseTileWords) fail("tile ", t, " is dense but holds ", words, " words");
      for (int w = kIndexWord; w < kDenseWord; ++w)
        if (tile[w] != 0) fail("tile ", t, ": word ", w, " before the dense rows is not zero");
      const uint16_t* rows16 = reinterpret_cast<const uint16_t*>(tile + kDenseWord);
      for (int w = kResidualStartWord; w < kIndexWord; ++w)
        if (tile[w] != 0) fail("tile ", t, " is dense but header word ", w, " is not zero");
      for (int r = 0; r < kTileM; ++r)
        for (int c = 0; c < kTileK; ++c) {
          const uint16_t v = rows16[64 * r + 8 * ((c / 8) ^ (r % 8)) + c % 8];
          if (v == 0x8000) fail("tile ", t, ": a zero at row ", r, ", column ", c, " is stored as -0");
          place(r, c, v, "dense");
        }
    } else {
      const int64_t r_count = tile[0];
      if (words != split_tile_words(r_count) || split_tile_words(r_count) > kDenseTileWords)
        fail("tile ", t, " holds ", words, " words; a split tile of ", r_count, " residual entries needs ",
             split_tile_words(r_count));
      const uint16_t* residual_start = reinterpret_cast<const uint16_t*>(tile + kResidualStartWord);
      if (residual_start[0] != 0) fail("tile ", t, ": residual_start[0] is ", residual_start[0]);
      for (int i = 0; i < kTileM / 16; ++i) {
        const int64_t begin = residual_start[i], end = i + 1 < kTileM / 16 ? residual_start[i + 1] : r_count;
        if (end < begin || end > r_count) fail("tile ", t, ": residual entries of row block ", i, " span [", begin, ", ", end, ")");
        // Slots and indices.
        for (int j = 0; j < 2; ++j) {
          const uint16_t* slots = reinterpret_cast<const uint16_t*>(tile + kSlotWord + 128 * (2 * i + j));
          for (int b = 0; b < 256; ++b) {
            const int rr = bitmap::bit_row(0, b), c = bitmap::bit_col(0, b), g = 8 * j + c / 2;
            if (c % 2) continue;  // the pair (b, b + 1) is one group's two slots
            const uint16_t s0 = slots[b], s1 = slots[b + 1];
            const int q = g % 4, p = (g / 4) % 2;
            const uint32_t word = tile[kIndexWord + 32 * i + 4 * (rr % 8) + 2 * p + j];
            const uint32_t nibble = word >> (16 * (rr / 8) + 4 * q) & 0xF;
            const int i0 = int(nibble & 3), i1 = int(nibble >> 2);
            const bool n0 = is_nonzero(s0), n1 = is_nonzero(s1);
            const bool canonical = n0 && n1   ? i0 < i1
                                   : n0       ? i0 < 3 && i1 == 3
                                   : n1       ? i0 == 2 && i1 == 3
                                              : i0 == 0 && i1 == 1;
            if (!canonical || (!n0 && s0) || (!n1 && s1))
              fail("tile ", t, ": row ", 16 * i + rr, " group ", g, " breaks the slot rule (indices ", i0, ", ", i1, ")");
            place(16 * i + rr, 4 * g + i0, s0, "slot");
            place(16 * i + rr, 4 * g + i1, s1, "slot");
          }
        }
        // Residual entries: after their group's two slots, once each.
        for (int64_t x = begin; x < end; ++x) {
          const uint32_t entry = tile[kResidualWord + x];
          const uint32_t pos = entry >> 16;
          if (pos % 2 || pos >= uint32_t(kResidualTileBytes)) fail("tile ", t, ": residual entry ", x, " has position ", pos);
          const int rr = residual_row(pos), c = residual_col(pos);
          const int row = 16 * i + rr, g = c / 4;
          int before = 0;
          for (int cc = 4 * g; cc < c; ++cc) before += is_nonzero(values[row * kTileK + cc]);
          if (before < 2 || values[row * kTileK + c] != 0 || !is_nonzero(uint16_t(entry)))
            fail("tile ", t, ": residual entry ", x, " (row ", row, ", column ", c, ") is not a third or fourth nonzero of its group");
          place(row, c, uint16_t(entry), "residual");
          ++residual;
        }
      }
      if (residual != r_count) fail("tile ", t, " counts ", r_count, " residual entries, holds ", residual);
      for (int64_t w = kResidualWord + r_count; w < words; ++w)
        if (tile[w] != 0) fail("tile ", t, ": padding word ", w, " is not zero");
    }
    if (nnz == 0) fail("tile ", t, " has no nonzeros but is not empty");
    // The encoder's choice of kind is part of the format: recount from the values.
    int64_t r_needed = 0;
    for (int r = 0; r < kTileM; ++r)
      for (int g = 0; g < kGroups; ++g) {
        int n = 0;
        for (int x = 0; x < 4; ++x) n += is_nonzero(values[r * kTileK + 4 * g + x]);
        r_needed += std::max(0, n - 2);
      }
    if (words != tile_words(nnz, r_needed))
      fail("tile ", t, " holds ", words, " words; its ", nnz, " nonzeros need ", tile_words(nnz, r_needed));
    stored += nnz;
  };
  detail::validate_tiles<kTileM, kTileK>(offsets, num_words, m, k, fail, check_tile);
  return stored;
}

}  // namespace sparsellm
