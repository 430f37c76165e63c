// What the host encoders of the sparse formats share: running work over
// ranges of indices on threads, and the grid of tiles W[m, k] (16-bit values,
// row-major) is cut into — each tile's nonzero count (±0 count as zero) and,
// given each tile's size in its format's 32-bit words, its word offset;
// the encoder's driver over that grid, templated on the format's per-tile
// encoder; and the checks of the tile offsets every validator starts with.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

#include "common/check.h"
#include "sparsellm/types.h"

namespace sparsellm::detail {

// Runs fn(begin, end) over [0, count) split into contiguous ranges, one per
// thread. Deterministic output is the caller's job: each index is handled by
// exactly one call, and calls write disjoint memory.
template <typename Fn>
void parallel_ranges(int64_t count, int threads, Fn fn) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  threads = static_cast<int>(std::min<int64_t>(threads, std::max<int64_t>(count, 1)));
  if (threads == 1) {
    fn(int64_t(0), count);
    return;
  }
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(threads);
  for (int t = 0; t < threads; ++t) {
    const int64_t begin = count * t / threads, end = count * (t + 1) / threads;
    pool.emplace_back([&, t, begin, end] {
      try {
        fn(begin, end);
      } catch (...) {
        errors[t] = std::current_exception();
      }
    });
  }
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

inline bool is_nonzero(uint16_t bits) { return (bits & 0x7FFF) != 0; }

// Nonzeros of tile (tr, tc) of kTileM × kTileK.
template <int kTileM, int kTileK>
int64_t tile_nnz(const uint16_t* dense, int64_t m, int64_t k, int64_t tr, int64_t tc) {
  const int64_t r0 = tr * kTileM, c0 = tc * kTileK;
  const int64_t r1 = std::min(m, r0 + kTileM), c1 = std::min(k, c0 + kTileK);
  int64_t n = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* row = dense + r * k;
    for (int64_t c = c0; c < c1; ++c) n += is_nonzero(row[c]);
  }
  return n;
}

struct TileGrid {
  int64_t tiles_m = 0, tiles_k = 0;
  std::vector<int64_t> nnz;       // [tiles] nonzeros per tile, row-major
  std::vector<uint32_t> offsets;  // [tiles + 1] first word of each tile; offsets[tiles] = all words
  int64_t total_nnz = 0;
};

// What a tile holds: its nonzeros and the 32-bit words its format stores them in.
struct TileSize {
  int64_t nnz = 0, words = 0;
};

// Sizes every tile with size_of(tr, tc) → TileSize (on `threads` threads) and
// lays the tiles out back to back. Throws InvalidArgument (prefixed by `who`)
// when the words exceed 32-bit offsets.
template <int kTileM, int kTileK, typename SizeOf>
TileGrid tile_grid(int64_t m, int64_t k, int threads, SizeOf size_of, const char* who) {
  TileGrid g;
  g.tiles_m = (m + kTileM - 1) / kTileM;
  g.tiles_k = (k + kTileK - 1) / kTileK;
  const int64_t tiles = g.tiles_m * g.tiles_k;
  std::vector<TileSize> sizes(tiles);
  parallel_ranges(g.tiles_m, threads, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < g.tiles_k; ++c) sizes[r * g.tiles_k + c] = size_of(r, c);
  });
  g.nnz.resize(tiles);
  g.offsets.resize(tiles + 1);
  int64_t total = 0;
  for (int64_t t = 0; t < tiles; ++t) {
    g.offsets[t] = uint32_t(total);
    total += sizes[t].words;
    g.nnz[t] = sizes[t].nnz;
    g.total_nnz += sizes[t].nnz;
    SPARSELLM_CHECK_ARG(total <= int64_t(UINT32_MAX), who, ": ", m, "x", k,
                        " holds too many nonzeros for 32-bit word offsets");
  }
  g.offsets[tiles] = uint32_t(total);
  return g;
}

// Encodes W[m, k] into a Host (BitmapHost, TiledCslHost) whose tile words are
// the member `words`: checks the input (errors prefixed by `who`), lays the
// tiles out with tile_grid (size_of(dense, m, k, tr, tc) → TileSize), then
// fills every tile holding nonzeros on `threads` threads over tile rows. Each
// thread makes its own TileEncoder{dense, m, k} (scratch stays per thread)
// and calls encode(tr, tc, out) for tile (tr, tc), with `out` its words,
// zero-filled. Each tile is written by exactly one thread: the output does not
// depend on the thread count.
template <typename Host, typename TileEncoder, int kTileM, int kTileK, typename SizeOf>
Host encode_tiles(const uint16_t* dense, int64_t m, int64_t k, DType dtype, int threads, SizeOf size_of,
                  std::vector<uint32_t> Host::*words, const char* who) {
  SPARSELLM_CHECK_ARG(m > 0 && k > 0, who, ": the matrix must be non-empty, got ", m, "x", k);
  SPARSELLM_CHECK_ARG(dense != nullptr, who, ": null input");
  Host out;
  out.m = m;
  out.k = k;
  out.dtype = dtype;
  const TileGrid grid = tile_grid<kTileM, kTileK>(
      m, k, threads, [&](int64_t tr, int64_t tc) { return size_of(dense, m, k, tr, tc); }, who);
  const int64_t tk = grid.tiles_k;
  out.tile_offsets = grid.offsets;
  out.nnz = grid.total_nnz;
  std::vector<uint32_t>& data = out.*words;
  data.assign(out.tile_offsets.back(), 0u);
  parallel_ranges(grid.tiles_m, threads, [&](int64_t r0, int64_t r1) {
    TileEncoder encode{dense, m, k};
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < tk; ++c)
        if (grid.nnz[r * tk + c] > 0) encode(r, c, data.data() + out.tile_offsets[r * tk + c]);
  });
  return out;
}

// The checks of a tiled matrix W[m, k] every validator starts with (its shape,
// offsets[0] = 0, offsets[tiles] = num_words), then check_tile(t, b, e, rows,
// cols) for every tile t: its words [b, e) and the rows × cols of W it holds
// (fewer than a full tile at the bottom and right edges). fail(parts...)
// throws the format's error.
template <int kTileM, int kTileK, typename Fail, typename CheckTile>
void validate_tiles(const uint32_t* offsets, int64_t num_words, int64_t m, int64_t k, Fail fail,
                    CheckTile check_tile) {
  if (m <= 0 || k <= 0) fail("invalid shape ", m, "x", k);
  const int64_t tm = (m + kTileM - 1) / kTileM, tk = (k + kTileK - 1) / kTileK, tiles = tm * tk;
  if (offsets[0] != 0) fail("tile_offsets[0] is ", offsets[0], ", expected 0");
  if (int64_t(offsets[tiles]) != num_words)
    fail("tile_offsets[", tiles, "] is ", offsets[tiles], " but there are ", num_words, " words");
  for (int64_t t = 0; t < tiles; ++t) {
    const int rows = int(std::min<int64_t>(kTileM, m - (t / tk) * kTileM));
    const int cols = int(std::min<int64_t>(kTileK, k - (t % tk) * kTileK));
    check_tile(t, offsets[t], offsets[t + 1], rows, cols);
  }
}

}  // namespace sparsellm::detail
