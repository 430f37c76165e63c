"""Exception types. The native module raises its own classes, which are these:
each native error type is re-exported here, so ``except sparsellm.DeviceError``
catches errors from C++ and Python alike."""
from __future__ import annotations


class NativeLibraryError(ImportError):
    """The compiled extension ``sparsellm._C`` could not be loaded."""


def _native_classes():
    try:
        from sparsellm import _C  # noqa: F401
    except ImportError:
        return None
    return _C


_C = _native_classes()

if _C is not None:
    Error = _C.Error
    InvalidArgument = _C.InvalidArgument
    FormatError = _C.FormatError
    DeviceError = _C.DeviceError
    OutOfMemory = _C.OutOfMemory
    CudaError = _C.CudaError
else:  # the extension is missing: same hierarchy in pure Python, so imports still work

    class Error(RuntimeError):
        """Base class of sparsellm errors."""

    class InvalidArgument(Error, ValueError):
        """A bad shape, dtype, device or parameter."""

    class FormatError(Error, ValueError):
        """A truncated, corrupt or unsupported weight file or buffer."""

    class DeviceError(Error):
        """No usable CUDA GPU."""

    class OutOfMemory(Error, MemoryError):
        """The GPU ran out of memory."""

    class CudaError(Error):
        """A CUDA call failed."""
