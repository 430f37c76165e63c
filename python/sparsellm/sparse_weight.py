"""A weight matrix encoded in a sparse format and resident on the GPU."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsellm._native import native
from sparsellm._torch import dtype_name, torch
from sparsellm.errors import InvalidArgument
from sparsellm.formats import encode_bitmap, encode_split24, encode_tiled_csl

# Sparse formats: name → (encoder, name of the data array in the encoder's output
# and in ``buffers``, validator in sparsellm._C).
FORMATS = {
    "tiled_csl": (encode_tiled_csl, "words", "validate_tiled_csl"),
    "bitmap": (encode_bitmap, "data", "validate_bitmap"),
    "split24": (encode_split24, "data", "validate_split24"),
}


def check_format(format: str) -> str:
    if format not in FORMATS:
        raise InvalidArgument(f"unknown sparse format '{format}' (available: {', '.join(repr(f) for f in FORMATS)})")
    return format


@dataclass
class SparseWeight:
    """W[M, K] encoded for the SpMM kernels.

    ``buffers`` holds the format's device arrays (Tiled-CSL: ``words``,
    ``tile_offsets``; bitmap and split 2:4: ``data``, ``tile_offsets``) and
    ``plan`` the stream-K plan for the GPU it lives on (every format has the
    same tile grid).
    """

    format: str
    shape: tuple[int, int]
    dtype: object  # torch.dtype
    nnz: int
    buffers: dict
    plan: object  # torch.int32 [blocks, 6] on the device
    host_offsets: np.ndarray

    @property
    def device(self):
        return self.plan.device

    @property
    def sparsity(self) -> float:
        m, k = self.shape
        return 1.0 - self.nnz / float(m * k)

    @property
    def nbytes(self) -> int:
        """Bytes the kernel streams from memory for this weight."""
        return sum(int(b.numel() * b.element_size()) for b in self.buffers.values())

    @property
    def data(self):
        """The device array of encoded tiles (uint32 words viewed as int32)."""
        return self.buffers[FORMATS[self.format][1]]

    @classmethod
    def from_dense(cls, weight, format: str = "tiled_csl", device=None, threads: int = 0) -> "SparseWeight":
        """Encode a dense [M, K] float16/bfloat16 tensor; zeros are the pruned entries."""
        torch_ = torch()
        if not isinstance(weight, torch_.Tensor) or weight.dim() != 2:
            raise InvalidArgument("SparseWeight.from_dense expects a 2-D torch.Tensor [out_features, in_features]")
        name = dtype_name(weight.dtype)
        encoder, data_key, _ = FORMATS[check_format(format)]
        device = torch_.device(device) if device is not None else (weight.device if weight.is_cuda else None)
        if device is None or device.type != "cuda":
            raise InvalidArgument("SparseWeight needs a CUDA device: pass device='cuda' or a CUDA weight")
        bits = weight.detach().contiguous().cpu().view(torch_.int16).numpy().view(np.uint16)
        enc = encoder(bits, name, threads)
        return cls.from_components(enc[data_key], enc["tile_offsets"], int(enc["m"]), int(enc["k"]), weight.dtype,
                                   int(enc["nnz"]), device, format=format)

    @classmethod
    def from_components(cls, words: np.ndarray, tile_offsets: np.ndarray, m: int, k: int, dtype, nnz: int,
                        device, format: str = "tiled_csl") -> "SparseWeight":
        """Upload encoded host arrays (validated first) and plan for the device.
        ``words`` is the format's data array (Tiled-CSL words, bitmap or split 2:4 tiles)."""
        torch_ = torch()
        C = native()
        _, data_key, validator = FORMATS[check_format(format)]
        words = np.ascontiguousarray(words, dtype=np.uint32)
        tile_offsets = np.ascontiguousarray(tile_offsets, dtype=np.uint32)
        getattr(C, validator)(tile_offsets, words, m, k)
        with torch_.cuda.device(device):
            blocks = C.spmm_plan_blocks()
            plan = C.spmm_plan(tile_offsets, m, k, blocks)
        as_i32 = lambda a: torch_.from_numpy(a.view(np.int32))  # noqa: E731
        # An empty matrix has no words; one zero vector keeps the buffer non-null
        # (no tile points into it).
        stored = words if words.size else np.zeros(4, np.uint32)
        buffers = {
            data_key: as_i32(stored).to(device),
            "tile_offsets": as_i32(tile_offsets).to(device),
        }
        return cls(format, (m, k), dtype, nnz, buffers, torch_.from_numpy(plan).to(device), tile_offsets)
