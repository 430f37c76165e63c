"""The entry to the C++ encoders, shared by every format."""
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
