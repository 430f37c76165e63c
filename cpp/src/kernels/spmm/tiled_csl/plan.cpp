// Stream-K plan of both SpMM formats (see sparsellm/spmm.h).
//
// cost(u) = words(u) + kTileCostWords: the bytes a tile brings in, plus what
// a tile costs whatever its nonzero count (waits, multiplication, zeroing;
// set when Tiled-CSL v1 zeroed a 16 KiB dense tile per tile, ≈ the time to
// stream 2 KiB); a row's last tile costs kRowCostWords more: the block that
// ends a row inside its range flushes the row there (stream_k.cuh:
// reduce_row), and while a shared row's partial goes out (and, where not
// every block is resident, its arrival ticket comes back), the block's
// consumers and then its producers stall.
// With U units, the first B' = min(B, U) blocks are used:
// block b gets the units whose cost prefix lies in [b·C/B', (b+1)·C/B'), C the
// total cost, moved so that each of them gets at least one unit; blocks B'..B
// are empty. So the blocks sharing a tile row are consecutive and non-empty,
// which lets the kernel's reduction address their partials without reading
// their plan entries (stream_k.cuh: reduce_row).
#include <algorithm>

#include "common/check.h"
#include "sparsellm/device.h"
#include "sparsellm/spmm.h"
#include "sparsellm/tiled_csl.h"

namespace sparsellm {
namespace {

constexpr int64_t kTileCostWords = 512;
// A row flush inside a range: what it costs a block's streaming there. Set at
// 12,288 words (≈ 4 µs of a block's streaming at decode widths on an H100)
// when every owner waited for its ticket. Since the owners hand partials to
// the row's lead without waiting for an answer (stream_k.cuh: reduce_row), a
// per-block timeline of Llama-2-7B's split 2:4 calls on an H200 found that the
// blocks that end a row inside their range finished ≈ 2 µs (≈ 8,000 words at
// ≈ 4,000 words a µs) before the others at 12,288, and a decode step was
// fastest at 2,048 of the values tried (12,288 to 2,048; kernel-notes: "The
// end of a call").
constexpr int64_t kRowCostWords = 2048;
constexpr int kBlocksPerSm = 2;

int64_t tiles_of(int64_t extent, int tile) { return (extent + tile - 1) / tile; }

}  // namespace

int spmm_plan_blocks() { return current_device().sm_count * kBlocksPerSm; }

int64_t spmm_tile_count(int64_t m, int64_t k) {
  return tiles_of(m, tiled_csl::kTileM) * tiles_of(k, tiled_csl::kTileK);
}

std::vector<StreamKBlock> spmm_plan(const uint32_t* offsets, int64_t m, int64_t k, int blocks) {
  SPARSELLM_CHECK_ARG(m > 0 && k > 0, "spmm_plan: invalid shape ", m, "x", k);
  SPARSELLM_CHECK_ARG(blocks > 0, "spmm_plan: blocks must be positive, got ", blocks);
  const int64_t tk = tiles_of(k, tiled_csl::kTileK);
  const int64_t units = spmm_tile_count(m, k);
  SPARSELLM_CHECK_ARG(units < INT32_MAX, "spmm_plan: too many tiles");
  // Cost of units [0, u): their words and tiles, and the rows they complete.
  auto prefix = [&](int64_t u) { return int64_t(offsets[u]) + u * kTileCostWords + u / tk * kRowCostWords; };
  const int64_t total = prefix(units);

  const int used = int(std::min<int64_t>(blocks, units));
  std::vector<int32_t> begin(blocks + 1, int32_t(units));
  int64_t u = 0;
  for (int b = 0; b < used; ++b) {
    const int64_t target = total * b / used;
    while (u < units && prefix(u) < target) ++u;
    // At least one unit per block: after the block before, and leaving one for each block after.
    begin[b] = int32_t(std::clamp<int64_t>(u, b == 0 ? 0 : begin[b - 1] + 1, units - (used - b)));
    u = begin[b];
  }
  return spmm_plan_of_ranges(begin, m, k);
}

std::vector<StreamKBlock> spmm_plan_of_ranges(const std::vector<int32_t>& begin, int64_t m, int64_t k) {
  const int64_t tk = tiles_of(k, tiled_csl::kTileK);
  const int64_t units = spmm_tile_count(m, k);
  SPARSELLM_CHECK_ARG(begin.size() >= 2 && begin.front() == 0 && begin.back() == units,
                      "spmm_plan_of_ranges: the ranges must cover the ", units, " tiles from 0");
  const int blocks = int(begin.size()) - 1;
  bool ended = false;
  for (int b = 0; b < blocks; ++b) {
    SPARSELLM_CHECK_ARG(begin[b] <= begin[b + 1], "spmm_plan_of_ranges: ranges must not decrease");
    SPARSELLM_CHECK_ARG(!(ended && begin[b] < begin[b + 1]), "spmm_plan_of_ranges: an empty block before a used one");
    ended = begin[b] == begin[b + 1];
  }
  // block_of(v): the non-empty block whose range holds unit v.
  auto block_of = [&](int64_t v) {
    return int32_t(std::upper_bound(begin.begin(), begin.end(), int32_t(v)) - begin.begin() - 1);
  };
  auto row_owners = [&](int64_t row, int32_t& lead, int32_t& parts) {
    lead = block_of(row * tk);
    const int32_t last = block_of((row + 1) * tk - 1);
    parts = 0;
    for (int32_t b = lead; b <= last; ++b) parts += begin[b] < begin[b + 1];
  };
  std::vector<StreamKBlock> plan(blocks);
  for (int b = 0; b < blocks; ++b) {
    StreamKBlock& blk = plan[b];
    blk.unit_begin = begin[b];
    blk.unit_end = begin[b + 1];
    if (blk.unit_begin == blk.unit_end) continue;
    row_owners(blk.unit_begin / tk, blk.first_row_lead, blk.first_row_parts);
    row_owners((blk.unit_end - 1) / tk, blk.last_row_lead, blk.last_row_parts);
  }
  return plan;
}

}  // namespace sparsellm
