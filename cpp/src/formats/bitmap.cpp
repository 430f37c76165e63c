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
void encode_tile(const uint16_t* dense, int64_t m, int64_t k, int64_t tr, int64_t tc, uint32_t* out) {
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
  SPARSELLM_CHECK_ARG(m > 0 && k > 0, "encode_bitmap: the matrix must be non-empty, got ", m, "x", k);
  SPARSELLM_CHECK_ARG(dense != nullptr, "encode_bitmap: null input");
  BitmapHost out;
  out.m = m;
  out.k = k;
  out.dtype = dtype;
  const detail::TileGrid grid = detail::tile_grid<kTileM, kTileK>(dense, m, k, threads, tile_words, "encode_bitmap");
  const int64_t tk = grid.tiles_k;
  out.tile_offsets = grid.offsets;
  out.nnz = grid.total_nnz;
  out.data.assign(out.tile_offsets.back(), 0u);
  detail::parallel_ranges(grid.tiles_m, threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < tk; ++c)
        if (grid.nnz[r * tk + c] > 0) encode_tile(dense, m, k, r, c, out.data.data() + out.tile_offsets[r * tk + c]);
  });
  return out;
}

void validate_bitmap(const uint32_t* offsets, const uint32_t* data, int64_t num_words, int64_t m, int64_t k) {
  auto fail = [](auto&&... parts) { throw FormatError(detail::concat("bitmap: ", parts...)); };
  if (m <= 0 || k <= 0) fail("invalid shape ", m, "x", k);
  const int64_t tm = (m + kTileM - 1) / kTileM, tk = (k + kTileK - 1) / kTileK, tiles = tm * tk;
  if (offsets[0] != 0) fail("tile_offsets[0] is ", offsets[0], ", expected 0");
  if (int64_t(offsets[tiles]) != num_words)
    fail("tile_offsets[", tiles, "] is ", offsets[tiles], " but there are ", num_words, " words");
  for (int64_t t = 0; t < tiles; ++t) {
    const uint32_t b = offsets[t], e = offsets[t + 1];
    if (e < b || e - b > uint32_t(kMaxTileWords)) fail("tile ", t, " spans words [", b, ", ", e, ")");
    if (e == b) continue;
    if (e - b < uint32_t(kHeaderWords)) fail("tile ", t, " is shorter than its header");
    const uint32_t* tile = data + b;
    const uint16_t* row_start = reinterpret_cast<const uint16_t*>(tile + kMaskWords);
    const uint16_t* values = reinterpret_cast<const uint16_t*>(tile + kHeaderWords);
    const int rows = int(std::min<int64_t>(kTileM, m - (t / tk) * kTileM));
    const int cols = int(std::min<int64_t>(kTileK, k - (t % tk) * kTileK));
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
  }
}

}  // namespace sparsellm
