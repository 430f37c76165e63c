// Host encoder and validator of the bitmap format (sparsellm/bitmap.h).
//
// Two passes over tile rows, split over threads: count each tile's nonzeros
// (its size follows from the count alone), then fill every tile at its
// offset. Each tile is written by exactly one thread: the output does not
// depend on the thread count.
#include "sparsellm/bitmap.h"

#include <algorithm>
#include <array>

#include "common/check.h"
#include "formats/tile_grid.h"

namespace sparsellm {
namespace {

using namespace bitmap;

using detail::is_nonzero;

// Writes one non-empty tile (out sized by tile_words, zero-filled). Branch-free:
// the tile is copied row by row (zeros past M and K), then read in mask order
// with every value stored at the running count and the count advanced by
// whether it is nonzero.
struct TileEncoder {
  const uint16_t* dense;
  int64_t m, k;
  void operator()(int64_t tr, int64_t tc, uint32_t* out) const;
};

void TileEncoder::operator()(int64_t tr, int64_t tc, uint32_t* out) const {
  const int64_t r0 = tr * kTileM, c0 = tc * kTileK;
  const int rows = int(std::min<int64_t>(kTileM, m - r0)), cols = int(std::min<int64_t>(kTileK, k - c0));
  std::array<uint16_t, kTileM * kTileK> tile{};
  for (int r = 0; r < rows; ++r) std::copy_n(dense + (r0 + r) * k + c0, cols, tile.data() + r * kTileK);
  std::array<uint16_t, kTileM * kTileK + 1> values;
  uint16_t* row_start = reinterpret_cast<uint16_t*>(out + kMaskWords);
  int count = 0;
  for (int i = 0; i < kBlocksM; ++i) {
    row_start[i] = uint16_t(count);
    for (int j = 0; j < kBlocksK; ++j)
      for (int q = 0; q < 8; ++q) {
        uint32_t word = 0;
        for (int bit = 0; bit < 32; ++bit) {
          const int b = 32 * q + bit;
          const uint16_t v = tile[bit_row(i, b) * kTileK + bit_col(j, b)];
          const uint32_t nonzero = is_nonzero(v);
          values[count] = v;
          count += int(nonzero);
          word |= nonzero << bit;
        }
        out[32 * i + 4 * q + j] = word;
      }
  }
  std::copy_n(values.data(), count, reinterpret_cast<uint16_t*>(out + kHeaderWords));
}

}  // namespace

BitmapHost encode_bitmap(const uint16_t* dense, int64_t m, int64_t k, DType dtype, int threads) {
  auto size_of = [](const uint16_t* w, int64_t rows, int64_t cols, int64_t tr, int64_t tc) {
    const int64_t nnz = detail::tile_nnz<kTileM, kTileK>(w, rows, cols, tr, tc);
    return detail::TileSize{nnz, tile_words(nnz)};
  };
  return detail::encode_tiles<BitmapHost, TileEncoder, kTileM, kTileK>(dense, m, k, dtype, threads, size_of,
                                                                        &BitmapHost::data, "encode_bitmap");
}

int64_t validate_bitmap(const uint32_t* offsets, const uint32_t* data, int64_t num_words, int64_t m, int64_t k) {
  auto fail = [](auto&&... parts) { throw FormatError(detail::concat("bitmap: ", parts...)); };
  int64_t stored = 0;
  auto check_tile = [&](int64_t t, uint32_t b, uint32_t e, int rows, int cols) {
    if (e < b || e - b > uint32_t(kMaxTileWords)) fail("tile ", t, " spans words [", b, ", ", e, ")");
    if (e == b) return;
    if (e - b < uint32_t(kHeaderWords)) fail("tile ", t, " is shorter than its header");
    const uint32_t* tile = data + b;
    const uint16_t* row_start = reinterpret_cast<const uint16_t*>(tile + kMaskWords);
    const uint16_t* values = reinterpret_cast<const uint16_t*>(tile + kHeaderWords);
    int64_t count = 0;
    for (int i = 0; i < kBlocksM; ++i) {
      if (row_start[i] != count)
        fail("tile ", t, ": row_start[", i, "] is ", row_start[i], ", the masks give ", count);
      for (int j = 0; j < kBlocksK; ++j)
        for (int q = 0; q < 8; ++q) {
          const uint32_t word = tile[32 * i + 4 * q + j];
          for (int bit = 0; bit < 32; ++bit) {
            if (!(word >> bit & 1)) continue;
            const int bb = 32 * q + bit;
            const int r = bit_row(i, bb), c = bit_col(j, bb);
            if (r >= rows || c >= cols) fail("tile ", t, " has a mask bit outside the matrix (row ", r, ", column ", c, ")");
          }
          count += __builtin_popcount(word);
        }
    }
    if (count == 0) fail("tile ", t, " has no nonzeros but is not empty");
    if (int64_t(e - b) != tile_words(count))
      fail("tile ", t, " holds ", e - b, " words; ", count, " nonzeros need ", tile_words(count));
    for (int64_t v = 0; v < count; ++v)
      if (!is_nonzero(values[v])) fail("tile ", t, ": value ", v, " is zero");
    for (int64_t v = count; v < 2 * int64_t(e - b - kHeaderWords); ++v)
      if (values[v] != 0) fail("tile ", t, ": padding value ", v, " is not zero");
    stored += count;
  };
  detail::validate_tiles<kTileM, kTileK>(offsets, num_words, m, k, fail, check_tile);
  return stored;
}

}  // namespace sparsellm
