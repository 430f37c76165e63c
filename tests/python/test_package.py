"""The package imports and fails clearly on a machine without a GPU."""
from __future__ import annotations

import subprocess
import sys

import pytest

import sparsellm
from sparsellm._native import native


def test_import_needs_no_gpu_and_no_torch():
    code = "import sys, sparsellm; assert 'torch' not in sys.modules; print(sparsellm.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == sparsellm.__version__


def test_native_library_loads():
    C = native()
    assert C.TILED_CSL_TILE_M == 128 and C.TILED_CSL_TILE_K == 64
    assert C.device_count() >= 0


def test_error_hierarchy_is_catchable_as_builtins():
    assert issubclass(sparsellm.InvalidArgument, ValueError)
    assert issubclass(sparsellm.InvalidArgument, sparsellm.Error)
    assert issubclass(sparsellm.OutOfMemory, MemoryError)
    assert issubclass(sparsellm.DeviceError, sparsellm.Error)


def test_no_gpu_raises_device_error():
    if native().device_count() > 0:
        pytest.skip("a GPU is present")
    with pytest.raises(sparsellm.DeviceError, match="needs an NVIDIA GPU"):
        native().current_device()


def test_invalid_dtype_is_invalid_argument():
    import numpy as np

    with pytest.raises(sparsellm.InvalidArgument, match="float16 or bfloat16"):
        native().encode_tiled_csl(np.zeros((4, 4), np.uint16), "float32")
