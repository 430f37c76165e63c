"""Tiled-CSL encoder (C++) against the independent numpy decoder."""
from __future__ import annotations

import numpy as np
import pytest

import sparsellm
from sparsellm._native import native
from sparsellm.formats import decode_tiled_csl, encode_tiled_csl

from format_bits import random_bits


@pytest.mark.parametrize("m,k", [(64, 172), (1000, 3000), (129, 65), (1, 1), (300, 64)])
@pytest.mark.parametrize("density", [0.0, 0.01, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_round_trip(m, k, density, dtype):
    rng = np.random.default_rng(hash((m, k, density, dtype)) % 2**32)
    bits = random_bits(rng, m, k, density, dtype)
    enc = encode_tiled_csl(bits, dtype)
    assert enc["nnz"] == int(np.count_nonzero(bits & 0x7FFF))
    assert enc["words"].size % 4 == 0
    assert np.all(np.diff(enc["tile_offsets"].astype(np.int64)) % 4 == 0)
    decoded = decode_tiled_csl(enc["tile_offsets"], enc["words"], m, k)
    np.testing.assert_array_equal(decoded, bits)


def test_uneven_rows_half_dense_half_empty():
    rng = np.random.default_rng(7)
    bits = random_bits(rng, 512, 256, 1.0, "float16")
    bits[1::2] = 0
    enc = encode_tiled_csl(bits, "float16")
    np.testing.assert_array_equal(decode_tiled_csl(enc["tile_offsets"], enc["words"], 512, 256), bits)


@pytest.mark.parametrize("fmt", ["tiled_csl", "bitmap", "split24"])
def test_encoder_speed_on_a_large_matrix(fmt):
    """A 36864×9216 matrix encodes in seconds, in every format (the measured time is printed)."""
    import time

    from sparsellm.formats import encode_bitmap, encode_split24

    encode = {"tiled_csl": encode_tiled_csl, "bitmap": encode_bitmap, "split24": encode_split24}[fmt]

    rng = np.random.default_rng(0)
    m, k = 36864, 9216
    bits = np.where(rng.random((m, k), dtype=np.float32) < 0.5, np.uint16(0x3C01), np.uint16(0))
    t0 = time.perf_counter()
    enc = encode(bits, "float16")
    seconds = time.perf_counter() - t0
    print(f"{fmt} encode 36864x9216 at 50%: {seconds:.2f} s")
    assert enc["nnz"] == int(np.count_nonzero(bits))
    assert seconds < 30


def test_validator_rejects_truncated_words():
    rng = np.random.default_rng(3)
    bits = random_bits(rng, 256, 128, 0.4, "float16")
    enc = encode_tiled_csl(bits, "float16")
    with pytest.raises(sparsellm.FormatError):
        native().validate_tiled_csl(enc["tile_offsets"], enc["words"][:-4], 256, 128)
    with pytest.raises(sparsellm.FormatError):
        native().validate_tiled_csl(enc["tile_offsets"][:-1], enc["words"], 256, 128)


def test_decoder_rejects_corrupt_word():
    rng = np.random.default_rng(4)
    bits = random_bits(rng, 128, 64, 0.4, "float16")
    enc = encode_tiled_csl(bits, "float16")
    cases = {  # word index (after the 4 header words) → corrupt word, and what the decoder must say
        4: ((np.uint32(16384 + 4) << 16) | 5, "malformed padding"),  # padding slot with a nonzero value
        5: (np.uint32(40 * 128) << 16 | 5, "another row block"),  # row 40 (group 2) in group 0
        3: (enc["words"][3] + (np.uint32(4) << 16), "inconsistent header"),  # group 7 ends past the tile
    }
    for index, (word, message) in cases.items():
        words = enc["words"].copy()
        words[index] = word
        with pytest.raises(ValueError, match=message):
            decode_tiled_csl(enc["tile_offsets"], words, 128, 64)


def test_encoder_rejects_non_2d():
    with pytest.raises(ValueError):
        encode_tiled_csl(np.zeros(10, np.uint16), "float16")
