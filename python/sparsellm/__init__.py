"""sparsellm: load-as-sparse, compute-as-dense inference for LLMs whose weights
are pruned to unstructured sparsity.

Importing the package needs neither a GPU nor torch; the native library is
loaded on first use, and anything that needs a GPU raises
:class:`sparsellm.DeviceError` with a clear message when there is none.
"""
from sparsellm.errors import (
    CudaError,
    DeviceError,
    Error,
    FormatError,
    InvalidArgument,
    NativeLibraryError,
    OutOfMemory,
)

__version__ = "0.1.0"

__all__ = [
    "CudaError",
    "DeviceError",
    "Error",
    "FormatError",
    "Generation",
    "InvalidArgument",
    "LLM",
    "NativeLibraryError",
    "OutOfMemory",
    "device_count",
    "__version__",
]


def __getattr__(name: str):
    # LLM loads lazily: `import sparsellm` stays free of the runtime and of any GPU.
    if name in ("LLM", "Generation"):
        from sparsellm import llm

        return getattr(llm, name)
    raise AttributeError(f"module 'sparsellm' has no attribute {name!r}")


def device_count() -> int:
    """Number of CUDA GPUs the native library sees (0 without a driver or GPU)."""
    from sparsellm._native import native

    return native().device_count()
