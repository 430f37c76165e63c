"""Split 2:4 format (docs/formats.md): encoder entry point and a numpy reference decoder.

W = P + R: in each group of four columns of a row, P keeps the first two nonzeros
(2:4 sparse, multiplied on mma.sp) and R the others. A 128×64 tile is either split —
word 0 the residual count R, words 1–4 eight uint16 residual starts (one per 16-row
block), indices [8, 264) (word 8 + 32 i + 4 g + 2 p + j: nibble q of the low half is
the index pair of group 4 p + q of row 16 i + g in k32 block j, of the high half row
16 i + g + 8), slots [264, 2312) (word 264 + 4 (32 (2 i + j) + l) + r: the two 16-bit
slots of lane l's A register r, slot bit 8 l + 2 r and 8 l + 2 r + 1 in the bitmap's
bit order), residual entries (value | position << 16; position 512 j + 2 b for the slot bit b
of k32 block j the element takes when its group's indices are (2, 3): R holds columns 2 and
3 of a group only) — or dense (word 0 = 0xFFFFFFFF, rows from word 32, 16-byte chunk c of
row r at c ^ (r % 8)).
"""
from __future__ import annotations

import numpy as np

from sparsellm.formats.encoding import TILE_K, TILE_M, decode_tiles, encode_with_native, fragment_positions

DENSE_TILE = 0xFFFFFFFF
INDEX_WORD = 8
SLOT_WORD = 264
RESIDUAL_WORD = 2312
DENSE_WORD = 32
DENSE_TILE_WORDS = DENSE_WORD + TILE_M * TILE_K // 2


_ROW, _COL = fragment_positions()  # row and slot column of slot bit b in its 16×16 block


def split_tile_words(residual: int) -> int:
    """Words of a split tile with ``residual`` residual entries."""
    return -(-(RESIDUAL_WORD + residual) // 4) * 4


def encode_split24(dense: np.ndarray, dtype: str, threads: int = 0) -> dict:
    """Encode a dense [m, k] float16 / bfloat16 matrix (its uint16 bits, or a float16 array for
    dtype 'float16') with the C++ encoder."""
    return encode_with_native("encode_split24", dense, dtype, threads)


# For slot bit b of block (i, j): its row in the row block, the group (0–7) in
# the k32 block, which slot of the group, and the index word's p and q.
_GROUP = _COL // 2
_SLOT = _COL % 2
_P, _Q = _GROUP // 4, _GROUP % 4


def _decode_split_tile(t: int, tile: np.ndarray) -> np.ndarray:
    residual = int(tile[0])
    if tile.size != split_tile_words(residual) or split_tile_words(residual) > DENSE_TILE_WORDS:
        raise ValueError(f"tile {t} holds {tile.size} words; {residual} residual entries need "
                         f"{split_tile_words(residual)}")
    starts = tile[1:5].view(np.uint16).astype(np.int64)
    if starts[0] != 0 or np.any(np.diff(starts) < 0) or starts[-1] > residual:
        raise ValueError(f"tile {t}: residual starts {starts.tolist()} are not 0 … {residual}, non-decreasing")
    # Slots: [i, j, b] → (row, column) through the index nibbles.
    i, j, b = np.meshgrid(np.arange(8), np.arange(2), np.arange(256), indexing="ij")
    slots = tile[SLOT_WORD:RESIDUAL_WORD].view(np.uint16).reshape(8, 2, 256)
    rr = _ROW[b]
    words = tile[INDEX_WORD + 32 * i + 4 * (rr % 8) + 2 * _P[b] + j].astype(np.int64)
    nibble = (words >> (16 * (rr // 8) + 4 * _Q[b])) & 0xF
    index = (nibble >> (2 * _SLOT[b])) & 3
    rows = 16 * i + rr
    cols = 32 * j + 4 * _GROUP[b] + index
    kept = (slots & 0x7FFF) != 0
    # Residual entries: row block by the starts, row and column from the position.
    entries = tile[RESIDUAL_WORD:RESIDUAL_WORD + residual].astype(np.int64)
    block = np.searchsorted(starts, np.arange(residual), side="right") - 1
    pos = entries >> 16
    if np.any(pos % 2) or np.any(pos >= 2 * 512):
        raise ValueError(f"tile {t}: a residual position is not a slot of the row block's two k32 blocks")
    slot_bit = (pos // 2) % 256
    r_row = _ROW[slot_bit]
    r_col = 32 * (pos // 512) + 4 * _GROUP[slot_bit] + 2 + _SLOT[slot_bit]
    all_rows = np.concatenate([rows[kept], 16 * block + r_row])
    all_cols = np.concatenate([cols[kept], r_col])
    all_values = np.concatenate([slots[kept], (entries & 0xFFFF).astype(np.uint16)])
    if np.unique(all_rows * TILE_K + all_cols).size != all_rows.size:
        raise ValueError(f"tile {t}: two stored values at one position")
    if np.any(tile[RESIDUAL_WORD + residual:]):
        raise ValueError(f"tile {t}: nonzero padding")
    out = np.zeros((TILE_M, TILE_K), dtype=np.uint16)
    out[all_rows, all_cols] = all_values
    return out


def _decode_dense_tile(t: int, tile: np.ndarray) -> np.ndarray:
    if tile.size != DENSE_TILE_WORDS:
        raise ValueError(f"tile {t} is dense but holds {tile.size} words")
    rows = tile[DENSE_WORD:].view(np.uint16).reshape(TILE_M, 8, 8)  # [row, stored chunk, element]
    r = np.arange(TILE_M)[:, None]
    return rows[r, np.arange(8)[None, :] ^ (r % 8)].reshape(TILE_M, TILE_K)


def decode_split24(tile_offsets: np.ndarray, data: np.ndarray, m: int, k: int) -> np.ndarray:
    """Dense uint16 bits [m, k] of an encoded matrix. Written independently of the C++
    encoder, to test it: raises ValueError on a malformed tile."""
    return decode_tiles(tile_offsets, data, m, k, INDEX_WORD, lambda t, tile: (
        _decode_dense_tile(t, tile) if tile[0] == DENSE_TILE else _decode_split_tile(t, tile)))
