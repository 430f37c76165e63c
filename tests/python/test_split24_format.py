"""Split 2:4 encoder (C++) against the independent numpy decoder; the validator;
the size model; and split 2:4 checkpoints written by the converter."""
from __future__ import annotations

import numpy as np
import pytest

import sparsellm
from sparsellm._native import native
from sparsellm.format_choice import weight_bytes
from sparsellm.formats import decode_split24, encode_split24
from sparsellm.formats.split24 import DENSE_TILE, DENSE_TILE_WORDS, split_tile_words

from format_bits import check_round_trip, random_bits


def tile_kinds(enc):
    offsets = enc["tile_offsets"].astype(np.int64)
    return [enc["data"][b] for b, e in zip(offsets[:-1], offsets[1:]) if e > b]


@pytest.mark.parametrize("m,k", [(64, 172), (1000, 3000), (129, 65), (1, 1), (300, 64), (4097, 130)])
@pytest.mark.parametrize("density", [0.0, 0.01, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_round_trip(m, k, density, dtype):
    check_round_trip("split24", m, k, density, dtype)


def test_residual_is_the_third_and_fourth_nonzeros_of_a_group():
    rng = np.random.default_rng(3)
    bits = random_bits(rng, 512, 512, 0.6, "float16")
    enc = encode_split24(bits, "float16")
    per_group = np.count_nonzero(bits.reshape(512, 128, 4), axis=2)
    assert enc["residual"] == int(np.maximum(per_group - 2, 0).sum())


def test_dense_tiles_where_split_ones_are_larger():
    rng = np.random.default_rng(5)
    bits = random_bits(rng, 256, 128, 1.0, "float16")
    bits[128:] = random_bits(rng, 128, 128, 0.2, "float16")  # tile row 1 sparse
    enc = encode_split24(bits, "float16")
    kinds = tile_kinds(enc)
    assert kinds[:2] == [DENSE_TILE, DENSE_TILE]
    assert all(kind != DENSE_TILE for kind in kinds[2:])
    sizes = np.diff(enc["tile_offsets"].astype(np.int64))
    assert list(sizes[:2]) == [DENSE_TILE_WORDS] * 2
    assert all(size == split_tile_words(kind) for size, kind in zip(sizes[2:], kinds[2:]))
    np.testing.assert_array_equal(decode_split24(enc["tile_offsets"], enc["data"], 256, 128), bits)


@pytest.mark.parametrize("sparsity", [0.5, 0.7, 0.9])
def test_size_model_matches_the_encoder(sparsity):
    rng = np.random.default_rng(9)
    m, k = 1024, 2048
    bits = random_bits(rng, m, k, 1.0 - sparsity, "float16")
    enc = encode_split24(bits, "float16")
    stored = enc["data"].nbytes + enc["tile_offsets"].nbytes
    assert stored == pytest.approx(weight_bytes("split24", m, k, sparsity), rel=0.02)


def test_validator_and_decoder_reject_corrupt_tiles():
    rng = np.random.default_rng(11)
    m, k = 200, 100
    bits = random_bits(rng, m, k, 0.5, "float16")
    enc = encode_split24(bits, "float16")
    assert enc["residual"] > 0
    for corrupt in (lambda d: d.__setitem__(0, d[0] + 1),                 # residual count
                    lambda d: d.__setitem__(8, d[8] | 0xF),               # an index pair (3, 3)
                    lambda d: d.__setitem__(2312, d[2312] ^ (1 << 16))):  # an odd residual position
        data = enc["data"].copy()
        corrupt(data)
        with pytest.raises(sparsellm.FormatError, match="split24"):
            native().validate_split24(enc["tile_offsets"], data, m, k)
    data = enc["data"].copy()
    data[0] += 1
    with pytest.raises(ValueError):
        decode_split24(enc["tile_offsets"], data, m, k)
    with pytest.raises(sparsellm.FormatError, match="tile_offsets"):
        native().validate_split24(enc["tile_offsets"][:-1], enc["data"], m, k)
