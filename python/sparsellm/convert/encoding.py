"""Per-tensor storage: dtype conversion, format choice and the stored components.

A tensor is stored in one of three formats (the ``"format"`` field of a checkpoint tensor):

* ``dense``: one component ``<name>``, the values as float16 or bfloat16.
* ``tiled_csl``: two uint32 components ``<name>.tile_offsets`` [tiles + 1] and
  ``<name>.words`` [words], the Tiled-CSL encoding of docs/formats.md (made by the C++
  encoder, ``sparsellm.formats.encode_tiled_csl``).
* ``bitmap``: two uint32 components ``<name>.tile_offsets`` [tiles + 1] and
  ``<name>.tiles`` [words], the bitmap encoding of docs/formats.md
  (``sparsellm.formats.encode_bitmap``).

Only pruned weights may be stored sparse; embeddings, norms, biases and the LM head
are always dense. ``auto`` picks ``tiled_csl`` for a pruned weight whose sparsity (of
the whole tensor, before the tensor-parallel split, so that every rank stores it
alike) is at least ``TILED_CSL_MIN_SPARSITY``; ``bitmap`` is chosen only when asked
for, until its kernel's measured speed on the device decides the threshold.

Values are handled as their 16-bit patterns (numpy has no bfloat16). A stored zero is
+0: negative zeros in pruned weights are replaced by +0, as the Tiled-CSL encoder
drops every zero (it keeps only values whose bits & 0x7FFF are not 0), so that
both formats hold the same bits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sparsellm.errors import InvalidArgument

# Our Tiled-CSL SpMM on H100 beats cuBLAS from about 55 % sparsity at decode sizes
# (N = 8..32: 0.93-0.96x at 50 %, 1.04-1.08x at 60 %, docs/benchmarks/spmm-h100-80gb-hbm3.md).
TILED_CSL_MIN_SPARSITY = 0.55

FORMAT_CHOICES = ("auto", "tiled_csl", "bitmap", "dense")
# Sparse formats: the key suffix of the data component beside ``<name>.tile_offsets``.
SPARSE_DATA_COMPONENT = {"tiled_csl": "words", "bitmap": "tiles"}
DTYPES = {"fp16": "float16", "float16": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}
_NEGATIVE_ZERO = np.uint16(0x8000)
CHUNK_ELEMENTS = 1 << 24  # elements per pass of the checks below (bounds their temporaries)


def check_format(requested: str) -> str:
    if requested not in FORMAT_CHOICES:
        raise InvalidArgument(f"unknown format {requested!r}; expected one of {', '.join(FORMAT_CHOICES)}")
    return requested


def check_dtype(dtype: str) -> str:
    """Canonical dtype name ('float16' or 'bfloat16') of 'fp16', 'bf16', 'float16' or 'bfloat16'."""
    if dtype not in DTYPES:
        raise InvalidArgument(f"unknown dtype {dtype!r}; expected fp16 or bf16")
    return DTYPES[dtype]


def to_bits(tensor: Any, dtype: str, name: str) -> np.ndarray:
    """The 16-bit patterns of a torch tensor converted to ``dtype`` (round to nearest even)."""
    import torch

    converted = tensor.detach().to(getattr(torch, dtype)).contiguous()
    if not all(bool(torch.isfinite(part).all()) for part in converted.view(-1).split(CHUNK_ELEMENTS)):
        hint = " (values beyond the float16 range? try --dtype bf16)" if dtype == "float16" else ""
        raise InvalidArgument(f"tensor {name} has NaN or infinite values in {dtype}{hint}")
    return converted.view(torch.int16).numpy().view(np.uint16)


def canonical_zeros(bits: np.ndarray) -> np.ndarray:
    """``bits`` (C-contiguous) with negative zeros made +0, in place."""
    assert bits.flags.c_contiguous, "canonical_zeros works in place on a C-contiguous array"
    flat = bits.reshape(-1)
    for i in range(0, flat.size, CHUNK_ELEMENTS):
        part = flat[i : i + CHUNK_ELEMENTS]
        part[part == _NEGATIVE_ZERO] = 0
    return bits


def nonzero_count(bits: np.ndarray) -> int:
    """Nonzero values among 16-bit float patterns (±0 count as zero)."""
    flat = bits.reshape(-1)
    return sum(int(np.count_nonzero(flat[i : i + CHUNK_ELEMENTS] & np.uint16(0x7FFF)))
               for i in range(0, flat.size, CHUNK_ELEMENTS))


def choose_format(requested: str, pruned: bool, sparsity: float) -> str:
    """The format a tensor is stored in (see the module docstring)."""
    if not pruned or requested == "dense":
        return "dense"
    if requested in SPARSE_DATA_COMPONENT:
        return requested
    return "tiled_csl" if sparsity >= TILED_CSL_MIN_SPARSITY else "dense"


def component_keys(name: str, fmt: str) -> list[str]:
    if fmt in SPARSE_DATA_COMPONENT:
        return [f"{name}.tile_offsets", f"{name}.{SPARSE_DATA_COMPONENT[fmt]}"]
    return [name]


def possible_components(name: str, ndim: int, pruned: bool) -> list[tuple[str, int]]:
    """(key, ndim) of every component a tensor might be stored as."""
    dense = [(name, ndim)]
    if not pruned:
        return dense
    sparse = {key for fmt in SPARSE_DATA_COMPONENT for key in component_keys(name, fmt)}
    return dense + [(key, 1) for key in sorted(sparse)]


def encode(name: str, bits: np.ndarray, fmt: str, dtype: str) -> dict[str, tuple[str, np.ndarray]]:
    """Components {key: (dtype, array)} of one shard, bits in [rows, cols] (or 1-D if dense)."""
    if fmt == "dense":
        return {name: (dtype, bits)}
    from sparsellm.formats import encode_bitmap, encode_tiled_csl

    if fmt == "bitmap":
        encoded = encode_bitmap(bits, dtype)
        data = encoded["data"]
    else:
        encoded = encode_tiled_csl(bits, dtype)
        data = encoded["words"]
    offsets_key, data_key = component_keys(name, fmt)
    return {offsets_key: ("uint32", encoded["tile_offsets"]), data_key: ("uint32", data)}
