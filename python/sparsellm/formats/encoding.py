"""What the format modules share: the entry to the C++ encoders, the checks of a tile grid's
offsets their decoders start with, the tile loop of the decoders whose tiles are runs of words,
and the lane order of mma.m16n8k16's A fragment."""
from __future__ import annotations

import numpy as np


def encode_with_native(encoder: str, dense: np.ndarray, dtype: str, threads: int = 0) -> dict:
    """Encode a dense [m, k] float16 / bfloat16 matrix (given as its uint16 bits, or as a float16
    array for dtype 'float16') with the C++ encoder ``sparsellm._C.<encoder>``."""
    from sparsellm._native import native

    bits = np.ascontiguousarray(dense).view(np.uint16) if dense.dtype != np.uint16 else np.ascontiguousarray(dense)
    if bits.ndim != 2:
        raise ValueError(f"{encoder}: expected a 2-D matrix, got shape {dense.shape}")
    return getattr(native(), encoder)(bits, dtype, threads)


TILE_M = 128
TILE_K = 64


def tile_grid(tile_offsets: np.ndarray, data: np.ndarray, m: int, k: int) -> tuple[np.ndarray, int, int]:
    """(offsets as int64, tiles_m, tiles_k) of W[m, k]'s 128×64 tile grid, after checking that
    ``tile_offsets`` holds one entry per tile and the end; with ``data`` (not None), that they run
    from 0 to its length without decreasing. Raises ValueError."""
    tiles_m, tiles_k = -(-m // TILE_M), -(-k // TILE_K)
    if tile_offsets.shape != (tiles_m * tiles_k + 1,):
        raise ValueError(f"tile_offsets has shape {tile_offsets.shape}, expected ({tiles_m * tiles_k + 1},)")
    offsets = tile_offsets.astype(np.int64)
    if data is not None and (offsets[0] != 0 or offsets[-1] != data.size or np.any(np.diff(offsets) < 0)):
        raise ValueError("tile_offsets are not 0 … len(data), non-decreasing")
    return offsets, tiles_m, tiles_k


def decode_tiles(tile_offsets: np.ndarray, data: np.ndarray, m: int, k: int, header_words: int,
                 decode_tile) -> np.ndarray:
    """Dense uint16 bits [m, k] of a format whose tiles are runs of ``data`` words (bitmap, split
    2:4): each non-empty tile, at least ``header_words`` long, is ``decode_tile(t, words)``'s
    128×64 values. Raises ValueError (the tile grid's, the decoder's, or nonzeros outside W)."""
    offsets, tiles_m, tiles_k = tile_grid(tile_offsets, data, m, k)
    padded = np.zeros((tiles_m * TILE_M, tiles_k * TILE_K), dtype=np.uint16)
    data = np.ascontiguousarray(data, dtype=np.uint32)
    for t in range(tiles_m * tiles_k):
        tile = data[offsets[t]: offsets[t + 1]]
        if tile.size == 0:
            continue
        if tile.size < header_words:
            raise ValueError(f"tile {t} is shorter than its header")
        tr, tc = divmod(t, tiles_k)
        padded[tr * TILE_M:(tr + 1) * TILE_M, tc * TILE_K:(tc + 1) * TILE_K] = decode_tile(t, tile)
    if padded[m:, :].any() or padded[:, k:].any():
        raise ValueError("nonzeros outside the matrix")
    return padded[:m, :k].copy()


def fragment_positions() -> tuple[np.ndarray, np.ndarray]:
    """(row, column) in a 16×16 block of bit b = 8·l + e, for b in 0..255: the e-th A value of
    lane l in mma.m16n8k16 (the bitmap's mask order, split 2:4's slot order)."""
    b = np.arange(256)
    lane, e = b >> 3, b & 7
    row = (lane >> 2) + 8 * ((e >> 1) & 1)
    col = 2 * (lane & 3) + (e & 1) + 8 * (e >> 2)
    return row, col
