"""Test configuration: `gpu` tests skip cleanly without a CUDA GPU (or without
the compiled library); `multigpu` tests need several GPUs (they start mpirun
themselves, see test_tensor_parallel.py)."""
from __future__ import annotations

import os

import pytest


def _share_cpu_threads() -> None:
    """Under pytest-xdist, give each worker its share of the cores for torch's CPU
    references: N workers each running one thread per core thrash the machine."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        try:
            import torch
        except ImportError:
            return
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


_share_cpu_threads()


def _gpu_count() -> int:
    try:
        from sparsellm._native import native

        return native().device_count()
    except Exception:
        return 0


GPUS = _gpu_count()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_multi = pytest.mark.skip(reason="needs several GPUs")
    for item in items:
        if "gpu" in item.keywords and GPUS == 0:
            item.add_marker(skip_gpu)
        if "multigpu" in item.keywords and GPUS < 2:
            item.add_marker(skip_multi)
