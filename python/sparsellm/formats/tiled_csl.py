"""Tiled-CSL version 2 (docs/formats.md): encoder entry point and a numpy reference decoder.

A non-empty 128×64 tile is 4 header words (8 uint16 group ends) and 8 groups of words, group g
holding the nonzeros of tile rows [16g, 16g + 16) padded to a multiple of 4 words. Word: bits
0..15 value bits, bits 16..31 the byte offset of the element in the tile stored as 128-byte rows
whose 16-byte chunks are XOR-swizzled by ``row & 7``; offsets ≥ 16384 are zero padding words.
"""
from __future__ import annotations

import numpy as np

from sparsellm.formats.encoding import TILE_K, TILE_M, encode_with_native, tile_grid

TILE_BYTES = TILE_M * TILE_K * 2
GROUP_ROWS = 16
GROUPS = TILE_M // GROUP_ROWS
HEADER_WORDS = GROUPS // 2


def encode_tiled_csl(dense: np.ndarray, dtype: str, threads: int = 0) -> dict:
    """Encode a dense [m, k] float16 / bfloat16 matrix (its uint16 bits, or a float16 array for
    dtype 'float16') with the C++ encoder."""
    return encode_with_native("encode_tiled_csl", dense, dtype, threads)


def _groups(tile_offsets: np.ndarray, words: np.ndarray, t: int) -> list[np.ndarray]:
    """[group g's words] of tile t; raises ValueError on an inconsistent header."""
    b, e = int(tile_offsets[t]), int(tile_offsets[t + 1])
    if e == b:
        return [np.zeros(0, np.uint32)] * GROUPS
    if e - b < HEADER_WORDS:
        raise ValueError(f"tile {t} is shorter than its header")
    header = words[b : b + HEADER_WORDS].astype(np.uint32)
    ends = np.stack([header & 0xFFFF, header >> 16], axis=1).reshape(-1).astype(np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    if np.any(ends < starts) or np.any((ends - starts) % 4) or HEADER_WORDS + ends[-1] != e - b:
        raise ValueError(f"tile {t} has an inconsistent header {ends.tolist()} for {e - b} words")
    body = words[b + HEADER_WORDS : e].astype(np.uint32)
    return [body[s:g] for s, g in zip(starts, ends)]


def decode_tiled_csl(tile_offsets: np.ndarray, words: np.ndarray, m: int, k: int) -> np.ndarray:
    """Dense uint16 bits [m, k] of an encoded matrix. Written independently of
    the C++ encoder, to test it: raises ValueError on any malformed word."""
    _, tiles_m, tiles_k = tile_grid(tile_offsets, None, m, k)
    padded = np.zeros((tiles_m * TILE_M, tiles_k * TILE_K), dtype=np.uint16)
    seen = np.zeros(padded.shape, dtype=bool)
    for t in range(tiles_m * tiles_k):
        for g, group in enumerate(_groups(tile_offsets, words, t)):
            pos = group >> 16
            value = (group & 0xFFFF).astype(np.uint16)
            pad = pos >= TILE_BYTES
            if np.any(value[pad] != 0) or np.any(pos[pad] >= TILE_BYTES + 128) or np.count_nonzero(pad) > 3:
                raise ValueError(f"tile {t} group {g} has a malformed padding word")
            pos, value = pos[~pad], value[~pad]
            if np.any(pos % 2):
                raise ValueError(f"tile {t} has an odd byte offset")
            row = pos // 128
            if np.any(row // GROUP_ROWS != g):
                raise ValueError(f"tile {t} group {g} holds a word of another row block")
            col = (((pos % 128) // 16) ^ (row & 7)) * 8 + (pos % 16) // 2
            r = (t // tiles_k) * TILE_M + row
            c = (t % tiles_k) * TILE_K + col
            if np.any(seen[r, c]) or len(np.unique(r * padded.shape[1] + c)) != len(r):
                raise ValueError(f"tile {t} stores an element twice")
            seen[r, c] = True
            padded[r, c] = value
    if padded[m:, :].any() or padded[:, k:].any():
        raise ValueError("nonzeros outside the matrix")
    return padded[:m, :k].copy()
