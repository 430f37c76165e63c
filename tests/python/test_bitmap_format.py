"""Bitmap encoder (C++) against the independent numpy decoder; the validator; and
bitmap checkpoints written by the converter."""
from __future__ import annotations

import numpy as np
import pytest

import sparsellm
from sparsellm._native import native
from sparsellm.formats import decode_bitmap, encode_bitmap
from sparsellm.formats.bitmap import HEADER_WORDS, MASK_WORDS, tile_words

from format_bits import check_round_trip, random_bits


@pytest.mark.parametrize("m,k", [(64, 172), (1000, 3000), (129, 65), (1, 1), (300, 64), (4097, 130)])
@pytest.mark.parametrize("density", [0.0, 0.01, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_round_trip(m, k, density, dtype):
    check_round_trip("bitmap", m, k, density, dtype)


def test_size_is_two_bytes_per_nonzero_plus_an_eighth_per_element():
    rng = np.random.default_rng(1)
    m, k = 1024, 1024
    bits = random_bits(rng, m, k, 0.5, "float16")
    enc = encode_bitmap(bits, "float16")
    per_element = enc["data"].nbytes / (m * k)
    nnz = enc["nnz"]
    assert per_element == pytest.approx(2 * nnz / (m * k) + 0.125, abs=0.003)
    sizes = np.diff(enc["tile_offsets"].astype(np.int64))
    assert sizes.max() <= tile_words(128 * 64)


def test_uneven_rows_and_negative_zero():
    rng = np.random.default_rng(7)
    bits = random_bits(rng, 512, 256, 1.0, "bfloat16")
    bits[1::2] = 0
    bits[256:] = 0x8000  # −0: zero
    enc = encode_bitmap(bits, "bfloat16")
    want = np.where((bits & 0x7FFF) != 0, bits, 0)
    np.testing.assert_array_equal(decode_bitmap(enc["tile_offsets"], enc["data"], 512, 256), want)
    assert enc["nnz"] == int(np.count_nonzero(want))


def test_empty_tiles_take_no_words():
    bits = np.zeros((300, 200), np.uint16)
    bits[5, 7] = 0x3C00
    enc = encode_bitmap(bits, "float16")
    assert enc["data"].size == tile_words(1) == 264
    assert np.count_nonzero(np.diff(enc["tile_offsets"].astype(np.int64))) == 1


def test_mask_bit_order_is_the_mma_fragment_order():
    """Element (row 9, column 10) of block (0, 0) is lane 4·(9 % 8) + (10 % 8) // 2 =
    lane 5 of the A fragment, register 3 (rows + 8, columns + 8), half 0: bit 8·5 + 6."""
    bits = np.zeros((128, 64), np.uint16)
    bits[9, 10] = 0x3C00
    enc = encode_bitmap(bits, "float16")
    masks = enc["data"][:MASK_WORDS]
    b = 8 * 5 + 6
    assert masks[4 * (b // 32) + 0] == np.uint32(1 << (b % 32))
    assert np.count_nonzero(masks) == 1
    assert enc["data"][HEADER_WORDS] & 0xFFFF == 0x3C00


def test_validator_and_decoder_reject_corruption():
    rng = np.random.default_rng(3)
    m, k = 256, 128
    bits = random_bits(rng, m, k, 0.4, "float16")
    enc = encode_bitmap(bits, "float16")
    offsets, data = enc["tile_offsets"], enc["data"]
    with pytest.raises(sparsellm.FormatError):
        native().validate_bitmap(offsets, data[:-4], m, k)
    with pytest.raises(sparsellm.FormatError):
        native().validate_bitmap(offsets[:-1], data, m, k)
    flipped = data.copy()
    flipped[1] ^= np.uint32(1 << 3)  # a mask bit: the counts no longer match
    with pytest.raises(sparsellm.FormatError):
        native().validate_bitmap(offsets, flipped, m, k)
    with pytest.raises(ValueError):
        decode_bitmap(offsets, flipped, m, k)
    zeroed = data.copy()
    zeroed[HEADER_WORDS] = 0  # two stored values zero
    with pytest.raises(sparsellm.FormatError):
        native().validate_bitmap(offsets, zeroed, m, k)
    with pytest.raises(ValueError):
        decode_bitmap(offsets, zeroed, m, k)


def test_encoder_rejects_bad_arguments():
    with pytest.raises(ValueError):
        encode_bitmap(np.zeros(5, np.uint16), "float16")
    with pytest.raises(sparsellm.InvalidArgument):
        native().encode_bitmap(np.zeros((4, 4), np.uint16), "float32")
    with pytest.raises(sparsellm.InvalidArgument):
        native().encode_bitmap(np.zeros((0, 4), np.uint16), "float16")


def test_encoder_is_deterministic_across_threads():
    rng = np.random.default_rng(5)
    bits = random_bits(rng, 700, 333, 0.5, "float16")
    a = native().encode_bitmap(bits, "float16", 1)
    b = native().encode_bitmap(bits, "float16", 3)
    np.testing.assert_array_equal(a["tile_offsets"], b["tile_offsets"])
    np.testing.assert_array_equal(a["data"], b["data"])


@pytest.mark.parametrize("tp", [1, 2])
def test_converter_writes_a_bitmap_checkpoint(tmp_path, tp):
    """--format bitmap: the reader validates the components and decodes them back."""
    transformers = pytest.importorskip("transformers")
    from sparsellm.convert import convert_random, load_checkpoint
    from sparsellm.convert.checkpoint import dense_weights

    cfg_path = tmp_path / "opt-config.json"  # a tiny OPT with awkward sizes (tiles cut at 128 × 64)
    cfg_path.write_text(transformers.OPTConfig(
        vocab_size=100, hidden_size=80, num_hidden_layers=2, ffn_dim=200, num_attention_heads=4,
        max_position_embeddings=64, word_embed_proj_dim=80).to_json_string())
    out = tmp_path / "ckpt"
    config = convert_random(cfg_path, out, sparsity=0.6, tp=tp, format="bitmap", dtype="fp16", progress=False)
    formats = {t["format"] for t in config["tensors"].values()}
    assert "bitmap" in formats and "tiled_csl" not in formats
    for rank in range(tp):
        cfg, arrays = load_checkpoint(out, rank)
        sparse = [n for n, t in cfg["tensors"].items() if t["format"] == "bitmap" and str(rank) in t["shards"]]
        assert sparse
        assert all(f"{n}.tiles" in arrays and f"{n}.tile_offsets" in arrays for n in sparse)
        weights = dense_weights(out, rank)
        for name in sparse:
            w = weights[name]
            assert list(w.shape) == cfg["tensors"][name]["shape"]
            nnz = cfg["tensors"][name]["shards"][str(rank)]["nnz"]
            assert int(np.count_nonzero(w.view(np.uint16) & 0x7FFF)) == nnz


def _popc(x: int) -> int:
    return bin(x & 0xFFFFFFFF).count("1")


@pytest.mark.parametrize("density", [0.05, 0.3, 0.5, 0.9, 1.0])
def test_kernel_decode_arithmetic(density):
    """A lane-by-lane model of the SpMM kernel's decode (spmm_bitmap.cu, consume()):
    16-byte mask load per quad, quad prefix sums by shuffles on 16-bit pairs, pair
    pointers q_r, predicated loads at q_r and q_{r+1} − 1 — rebuilds every A fragment."""
    rng = np.random.default_rng(int(density * 100))
    bits = random_bits(rng, 128, 64, density, "float16")
    enc = encode_bitmap(bits, "float16")
    words = enc["data"]
    halves = np.zeros(2 * 4356 + 16, np.uint16)  # the stage: one tile, then slack
    halves[: 2 * words.size] = words.view(np.uint16)
    for warp in range(8):
        mw = [[int(words[32 * warp + 4 * (lane >> 2) + j]) for j in range(4)] for lane in range(32)]
        row_start = int(halves[2 * MASK_WORDS + warp])
        scan, total = [], []
        for h in range(2):
            count = [_popc(mw[lane][2 * h]) | (_popc(mw[lane][2 * h + 1]) << 16) for lane in range(32)]
            s = list(count)
            for d in (4, 8, 16):  # __shfl_up_sync, added where lane >= d
                s = [s[lane] + s[lane - d] if lane >= d else s[lane] for lane in range(32)]
            total.append(s[31])
            scan.append([s[lane] - count[lane] for lane in range(32)])
        t0, t1 = total
        for lane in range(32):
            shift = 8 * (lane & 3)
            s0, s1 = scan[0][lane], scan[1][lane]
            first = [row_start + (s0 & 0xFFFF), row_start + (t0 & 0xFFFF) + (s0 >> 16),
                     row_start + (t0 & 0xFFFF) + (t0 >> 16) + (s1 & 0xFFFF),
                     row_start + (t0 & 0xFFFF) + (t0 >> 16) + (t1 & 0xFFFF) + (s1 >> 16)]
            for j in range(4):
                byte = (mw[lane][j] >> shift) & 0xFF
                p = 2 * HEADER_WORDS + first[j] + _popc(mw[lane][j] & ((1 << shift) - 1))
                pair = [p, p + _popc(byte & 3), p + _popc(byte & 0xF), p + _popc(byte & 0x3F), p + _popc(byte)]
                for r in range(4):
                    lo = int(halves[pair[r]]) if byte >> (2 * r) & 1 else 0
                    hi = int(halves[pair[r + 1] - 1]) if byte >> (2 * r + 1) & 1 else 0
                    row = 16 * warp + (lane >> 2) + 8 * (r & 1)
                    col = 16 * j + 2 * (lane & 3) + 8 * (r >> 1)
                    assert (lo, hi) == (bits[row, col], bits[row, col + 1]), (warp, lane, j, r)
                    assert pair[r + 1] <= 2 * 4356  # reads stay inside the stage's tile reservation
