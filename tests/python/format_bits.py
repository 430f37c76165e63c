"""Random sparse matrices as 16-bit patterns, for the format tests."""
from __future__ import annotations

import numpy as np


def random_bits(rng, m, k, density, dtype):
    """[m, k] uint16 bits of float16 or bfloat16 values ~ N(0, 0.05), each kept with probability
    ``density`` (zeros as +0)."""
    values = rng.standard_normal((m, k)).astype(np.float32) * 0.05
    if dtype == "float16":
        bits = values.astype(np.float16).view(np.uint16)
    else:  # bfloat16: the upper half of the float32 bits (round toward zero is fine for a test)
        bits = (values.view(np.uint32) >> 16).astype(np.uint16)
    keep = rng.random((m, k)) < density
    return np.where(keep & ((bits & 0x7FFF) != 0), bits, 0).astype(np.uint16)


def check_round_trip(fmt, m, k, density, dtype):
    """A random matrix encoded in ``fmt`` ("bitmap", "split24"): the nonzero count, 16-byte tiles,
    the C++ validator's count, and the numpy decoder's matrix."""
    import sparsellm.formats as formats
    from sparsellm._native import native

    rng = np.random.default_rng(hash((m, k, density, dtype, fmt)) % 2**32)
    bits = random_bits(rng, m, k, density, dtype)
    enc = getattr(formats, f"encode_{fmt}")(bits, dtype)
    nnz = int(np.count_nonzero(bits & 0x7FFF))
    assert enc["nnz"] == nnz
    offsets = enc["tile_offsets"].astype(np.int64)
    assert np.all(np.diff(offsets) % 4 == 0)
    assert offsets[-1] == enc["data"].size
    assert getattr(native(), f"validate_{fmt}")(enc["tile_offsets"], enc["data"], m, k) == nnz
    np.testing.assert_array_equal(getattr(formats, f"decode_{fmt}")(enc["tile_offsets"], enc["data"], m, k), bits)
