"""The stream-K plan (cpp/src/kernels/spmm/tiled_csl/plan.cpp), on the host: the
ranges cover every tile once, in order; the used blocks come first and are
never empty; and the blocks that share a tile row are consecutive, as the
kernels' reduction assumes (stream_k.cuh: reduce_row)."""
import numpy as np
import pytest

from sparsellm._native import native

TILE_M, TILE_K = 128, 64
TILE_COST, ROW_COST = 512, 2048  # plan.cpp: kTileCostWords, kRowCostWords


def plan_of(words_per_tile, m, k, blocks):
    offsets = np.concatenate([[0], np.cumsum(words_per_tile)]).astype(np.uint32)
    return native().spmm_plan(offsets, m, k, blocks)


def check_plan(plan, m, k, blocks):
    tiles_k = -(-k // TILE_K)
    units = -(-m // TILE_M) * tiles_k
    begin, end = plan[:, 0], plan[:, 1]
    used = min(blocks, units)
    assert plan.shape == (blocks, 6)
    assert begin[0] == 0 and end[used - 1] == units
    assert (end[:used] > begin[:used]).all(), "a used block is empty"
    assert (begin[used:] == end[used:]).all(), "a block after the used ones has tiles"
    assert (begin[1:used] == end[: used - 1]).all(), "ranges do not follow each other"
    for b in range(used):
        for row, lead, parts in ((begin[b] // tiles_k, plan[b, 2], plan[b, 3]),
                                 ((end[b] - 1) // tiles_k, plan[b, 4], plan[b, 5])):
            owners = [o for o in range(used) if begin[o] < (row + 1) * tiles_k and end[o] > row * tiles_k]
            assert owners == list(range(lead, lead + parts)), (b, row)


@pytest.mark.parametrize("m,k,blocks", [(128, 4096, 264), (1024, 4096, 264), (4096, 4096, 264),
                                        (300, 70, 264), (12288, 4096, 264), (4096, 11008, 7)])
def test_uniform_tiles(m, k, blocks):
    units = -(-m // TILE_M) * -(-k // TILE_K)
    rng = np.random.default_rng(m + k)
    words = rng.integers(900, 1100, units)
    plan = plan_of(words, m, k, blocks)
    check_plan(plan, m, k, blocks)
    # Balanced by cost (words + TILE_COST per tile, ROW_COST more on a row's last tile): no block
    # over its share by more than one tile.
    tiles_k = -(-k // TILE_K)
    cost = words + TILE_COST + np.where(np.arange(units) % tiles_k == tiles_k - 1, ROW_COST, 0)
    used = min(blocks, units)
    block_cost = [cost[b:e].sum() for b, e in plan[:used, :2]]
    assert max(block_cost) <= cost.sum() / used + cost.max()


def test_blocks_that_end_a_row_get_fewer_tiles():
    # Llama-2-7B's stacked QKV (a row every 2.75 blocks): a block that ends a row inside its range
    # flushes it there, so the plan gives it about ROW_COST / tile cost fewer tiles than the rest
    # (light tiles, so that this is several tiles).
    m, k, blocks = 12288, 4096, 264
    tiles_k = k // TILE_K
    units = m // TILE_M * tiles_k
    words = np.full(units, 100)
    plan = plan_of(words, m, k, blocks)
    check_plan(plan, m, k, blocks)
    begin, end = plan[:, 0], plan[:, 1]
    ends_row = (end - 1) // tiles_k > begin // tiles_k
    fewer = (end - begin)[~ends_row].mean() - (end - begin)[ends_row].mean()
    assert ROW_COST / (100 + TILE_COST) > 3
    assert abs(fewer - ROW_COST / (100 + TILE_COST)) < 1.0, fewer


def test_uneven_tiles_leave_no_gap():
    # A few heavy tiles among empty ones: cost targets fall inside one tile, yet no used block is empty.
    m, k, blocks = 512, 1024, 40
    units = 4 * 16
    words = np.zeros(units, np.int64)
    words[[3, 17, 40]] = 200_000
    check_plan(plan_of(words, m, k, blocks), m, k, blocks)
