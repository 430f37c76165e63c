"""Tiled-CSL (docs/formats.md): encoder entry point and a numpy reference decoder.

Word layout: bits 0..15 value bits, bits 16..31 the byte offset of the element
in a 128×64 tile stored as 128-byte rows whose 16-byte chunks are XOR-swizzled
by ``row & 7``; offsets ≥ 16384 are zero padding words.
"""
from __future__ import annotations

import numpy as np

from sparsellm.formats.encoding import encode_with_native

TILE_M = 128
TILE_K = 64
TILE_BYTES = TILE_M * TILE_K * 2


def encode_tiled_csl(dense: np.ndarray, dtype: str, threads: int = 0) -> dict:
    """Encode a dense [m, k] float16 / bfloat16 matrix (its uint16 bits, or a float16 array for
    dtype 'float16') with the C++ encoder."""
    return encode_with_native("encode_tiled_csl", dense, dtype, threads)


def decode_tiled_csl(tile_offsets: np.ndarray, words: np.ndarray, m: int, k: int) -> np.ndarray:
    """Dense uint16 bits [m, k] of an encoded matrix. Written independently of
    the C++ encoder, to test it: raises ValueError on any malformed word."""
    tiles_m, tiles_k = -(-m // TILE_M), -(-k // TILE_K)
    if tile_offsets.shape != (tiles_m * tiles_k + 1,):
        raise ValueError(f"tile_offsets has shape {tile_offsets.shape}, expected ({tiles_m * tiles_k + 1},)")
    padded = np.zeros((tiles_m * TILE_M, tiles_k * TILE_K), dtype=np.uint16)
    seen = np.zeros(padded.shape, dtype=bool)
    offsets = tile_offsets.astype(np.int64)
    for t in range(tiles_m * tiles_k):
        tile = words[offsets[t] : offsets[t + 1]].astype(np.uint32)
        if tile.size % 4:
            raise ValueError(f"tile {t} holds {tile.size} words, not a multiple of 4")
        pos = tile >> 16
        value = (tile & 0xFFFF).astype(np.uint16)
        pad = pos >= TILE_BYTES
        if np.any(value[pad] != 0) or np.any(pos[pad] >= TILE_BYTES + 128):
            raise ValueError(f"tile {t} has a malformed padding word")
        pos, value = pos[~pad], value[~pad]
        if np.any(pos % 2):
            raise ValueError(f"tile {t} has an odd byte offset")
        row = pos // 128
        col = (((pos % 128) // 16) ^ (row & 7)) * 8 + (pos % 16) // 2
        r = (t // tiles_k) * TILE_M + row
        c = (t % tiles_k) * TILE_K + col
        if np.any(seen[r, c]):
            raise ValueError(f"tile {t} stores an element twice")
        seen[r, c] = True
        padded[r, c] = value
    if padded[m:, :].any() or padded[:, k:].any():
        raise ValueError("nonzeros outside the matrix")
    return padded[:m, :k].copy()
