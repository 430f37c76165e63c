"""Bitmap format (docs/formats.md): encoder entry point and a numpy reference decoder.

A 128×64 tile is 8×4 blocks of 16×16; each block has a 256-bit mask whose bit
``8·l + e`` is the element lane ``l`` of a warp holds as its ``e``-th A value of
``mma.m16n8k16``; values follow in bit order. Tile layout in 32-bit words:
masks [0, 256) (row block i in [32 i, 32 i + 32), word 32 i + 4 q + j = bits
[32 q, 32 q + 32) of block (i, j)), row starts [256, 260) (8 × uint16), values
from word 260 (uint16), zero-padded to 16 bytes. A tile without nonzeros is empty.
"""
from __future__ import annotations

import numpy as np

from sparsellm.formats.encoding import TILE_K, TILE_M, decode_tiles, encode_with_native, fragment_positions

MASK_WORDS = 256
HEADER_WORDS = 260

_ROW, _COL = fragment_positions()  # of mask bit b in its 16×16 block


def tile_words(nnz: int) -> int:
    """Words a tile with ``nnz`` nonzeros occupies."""
    if nnz == 0:
        return 0
    return -(-(HEADER_WORDS + -(-nnz // 2)) // 4) * 4


def encode_bitmap(dense: np.ndarray, dtype: str, threads: int = 0) -> dict:
    """Encode a dense [m, k] float16 / bfloat16 matrix (its uint16 bits, or a float16 array for
    dtype 'float16') with the C++ encoder."""
    return encode_with_native("encode_bitmap", dense, dtype, threads)


def _decode_tile(t: int, tile: np.ndarray) -> np.ndarray:
    # masks[i, j] as 256 bits, bit b = 32 q + (bit in word q).
    words = tile[:MASK_WORDS].reshape(8, 8, 4)  # [row block i, word q, block j]
    bits = (words[..., None] >> np.arange(32, dtype=np.uint32)) & 1  # [i, q, j, 32]
    bits = bits.transpose(0, 2, 1, 3).reshape(8, 4, 256).astype(bool)  # [i, j, b]
    count = int(bits.sum())
    if tile.size != tile_words(count):
        raise ValueError(f"tile {t} holds {tile.size} words; {count} nonzeros need {tile_words(count)}")
    row_start = tile[MASK_WORDS:HEADER_WORDS].view(np.uint16).astype(np.int64)
    per_row_block = bits.reshape(8, -1).sum(axis=1)
    expected = np.concatenate([[0], np.cumsum(per_row_block)[:-1]])
    if np.any(row_start != expected):
        raise ValueError(f"tile {t}: row starts {row_start.tolist()} disagree with the masks")
    values = tile[HEADER_WORDS:].view(np.uint16)
    if np.any(values[count:] != 0):
        raise ValueError(f"tile {t}: nonzero padding")
    if np.any((values[:count] & 0x7FFF) == 0):
        raise ValueError(f"tile {t}: a stored value is zero")
    i, j, b = np.nonzero(bits)  # row-major over (i, j, b): the value order
    out = np.zeros((TILE_M, TILE_K), dtype=np.uint16)
    out[16 * i + _ROW[b], 16 * j + _COL[b]] = values[:count]
    return out


def decode_bitmap(tile_offsets: np.ndarray, data: np.ndarray, m: int, k: int) -> np.ndarray:
    """Dense uint16 bits [m, k] of an encoded matrix. Written independently of
    the C++ encoder, to test it: raises ValueError on any malformed tile."""
    return decode_tiles(tile_offsets, data, m, k, HEADER_WORDS, _decode_tile)
