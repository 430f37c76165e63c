"""Test configuration: `gpu` tests skip cleanly without a CUDA GPU (or without
the compiled library); `multigpu` tests need several GPUs under mpirun."""
from __future__ import annotations

import os

import pytest


def _gpu_count() -> int:
    try:
        from sparsellm._native import native

        return native().device_count()
    except Exception:
        return 0


GPUS = _gpu_count()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    world = int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("PMI_SIZE", "1")))
    skip_multi = pytest.mark.skip(reason="needs several GPUs under mpirun")
    for item in items:
        if "gpu" in item.keywords and GPUS == 0:
            item.add_marker(skip_gpu)
        if "multigpu" in item.keywords and (GPUS < 2 or world < 2):
            item.add_marker(skip_multi)
