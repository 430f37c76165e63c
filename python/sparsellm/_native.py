"""Loads the compiled extension with a clear error when it is missing."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def native():
    try:
        from sparsellm import _C
    except ImportError as exc:
        from sparsellm.errors import NativeLibraryError

        raise NativeLibraryError(
            "sparsellm's compiled library (sparsellm._C) could not be loaded: "
            f"{exc}. Install the package with `pip install .` from the source tree "
            "(it builds the CUDA library)."
        ) from exc
    return _C


def require_gpu() -> dict:
    """Properties of the current GPU; raises DeviceError when there is none."""
    return native().current_device()
