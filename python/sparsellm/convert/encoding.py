"""Per-tensor storage: dtype conversion, format choice and the stored components.

A tensor is stored in one of four formats (the ``"format"`` field of a checkpoint tensor):

* ``dense``: one component ``<name>``, the values as float16 or bfloat16.
* ``tiled_csl``: two uint32 components ``<name>.tile_offsets`` [tiles + 1] and
  ``<name>.words`` [words], the Tiled-CSL encoding of docs/formats.md (made by the C++
  encoder, ``sparsellm.formats.encode_tiled_csl``).
* ``bitmap``: two uint32 components ``<name>.tile_offsets`` [tiles + 1] and
  ``<name>.tiles`` [words], the bitmap encoding of docs/formats.md
  (``sparsellm.formats.encode_bitmap``).
* ``split24``: the same two components, the split 2:4 encoding of docs/formats.md
  (``sparsellm.formats.encode_split24``).

Only pruned weights may be stored sparse; embeddings, norms, biases and the LM head
are always dense. ``auto`` picks, for a pruned weight, the format a speed model of the
target GPU predicts fastest at the decode batch (``sparsellm.format_choice``; the
requested format may be a ``FormatPolicy`` carrying the model, else the default one is
loaded), from the sparsity of the whole tensor (before the tensor-parallel split, so
that every rank stores it alike) and the shape a rank multiplies. The chosen format
comes with its reason in words (``ChosenFormat.reason``, config.json
``"format_reason"`` via ``format_fields``).

Values are handled as their 16-bit patterns (numpy has no bfloat16). A stored zero is
+0: negative zeros in pruned weights are replaced by +0, as the Tiled-CSL encoder
drops every zero (it keeps only values whose bits & 0x7FFF are not 0), so that
both formats hold the same bits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sparsellm.errors import InvalidArgument

from .checkpoint import SPARSE_DATA_COMPONENT

# The fixed rule ``auto`` followed before the speed model (Tiled-CSL from 55 % sparsity);
# kept for callers of the package API, no longer used by ``choose_format``.
TILED_CSL_MIN_SPARSITY = 0.55
# Shape assumed when a caller gives none (a mid-size decoder weight).
DEFAULT_CHOICE_SHAPE = (8192, 8192)

FORMAT_CHOICES = ("auto", *SPARSE_DATA_COMPONENT, "dense")
DTYPES = {"fp16": "float16", "float16": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}
_NEGATIVE_ZERO = np.uint16(0x8000)
CHUNK_ELEMENTS = 1 << 24  # elements per pass of the checks below (bounds their temporaries)


class ChosenFormat(str):
    """A format name (equal to the plain string) with the reason it was chosen."""

    reason: str

    def __new__(cls, fmt: str, reason: str) -> "ChosenFormat":
        chosen = super().__new__(cls, fmt)
        chosen.reason = reason
        return chosen


def check_format(requested: Any) -> Any:
    """``requested`` if it is a format name of ``FORMAT_CHOICES`` or a ``FormatPolicy`` (= auto)."""
    from sparsellm.format_choice import FormatPolicy

    if isinstance(requested, FormatPolicy):
        return requested
    if not isinstance(requested, str) or requested not in FORMAT_CHOICES:
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
    bits = converted.view(torch.int16).numpy().view(np.uint16)
    # NaN or infinity: every exponent bit set (read from the bits: half-precision math on the CPU is slow).
    exponent = np.uint16(0x7C00 if dtype == "float16" else 0x7F80)
    flat = bits.reshape(-1)
    if any(np.any((flat[i : i + CHUNK_ELEMENTS] & exponent) == exponent) for i in range(0, flat.size, CHUNK_ELEMENTS)):
        hint = " (values beyond the float16 range? try --dtype bf16)" if dtype == "float16" else ""
        raise InvalidArgument(f"tensor {name} has NaN or infinite values in {dtype}{hint}")
    return bits


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


_default_policy: Any = None


def default_policy() -> Any:
    """The ``FormatPolicy`` of ``auto`` when none is given: this GPU's model, else H100's; N = 16."""
    global _default_policy
    if _default_policy is None:
        from sparsellm.format_choice import FormatPolicy

        _default_policy = FormatPolicy.load()
    return _default_policy


def choose_format(requested: Any, pruned: bool, sparsity: float,
                  shape: tuple[int, ...] | None = None) -> ChosenFormat:
    """The format a tensor is stored in, with its reason (see the module docstring).

    ``requested``: a name of ``FORMAT_CHOICES`` or a ``FormatPolicy``; ``sparsity``: of the
    whole tensor; ``shape``: [M, K] of the shard a rank multiplies (default
    ``DEFAULT_CHOICE_SHAPE``).
    """
    if not pruned:
        return ChosenFormat("dense", "not a pruned weight")
    if isinstance(requested, str) and requested != "auto":
        return ChosenFormat(requested, "requested")
    policy = default_policy() if isinstance(requested, str) else requested
    shape = tuple(shape) if shape is not None and len(shape) == 2 else DEFAULT_CHOICE_SHAPE
    choice = policy.choose(shape, sparsity)
    return ChosenFormat(choice.format, f"{choice.reason} ({policy.model.gpu} model)")


def format_fields(chosen: str) -> dict[str, str]:
    """The config.json fields of a tensor's format: ``format`` and, if known, ``format_reason``."""
    reason = getattr(chosen, "reason", None)
    return {"format": str(chosen), **({"format_reason": reason} if reason else {})}


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
    from sparsellm.sparse_weight import FORMATS

    encoder, data_field, _ = FORMATS[fmt]
    encoded = encoder(bits, dtype)
    data = encoded[data_field]
    offsets_key, data_key = component_keys(name, fmt)
    return {offsets_key: ("uint32", encoded["tile_offsets"]), data_key: ("uint32", data)}
