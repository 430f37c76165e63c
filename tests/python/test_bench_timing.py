"""The benchmark timer (sparsellm/bench/timing.py) times the GPU, not the host:
every launch of a case is queued while the GPU waits, so a host slower than the
kernel adds nothing to the spans; a function that synchronizes is reported."""
from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch")

from sparsellm.bench.timing import Timer  # noqa: E402


def _timer():
    return Timer(torch, torch.device("cuda", torch.cuda.current_device()), flush_bytes=8 << 20)


@pytest.mark.gpu
def test_a_host_slower_than_the_kernel_is_not_timed():
    timer = _timer()
    x = torch.randn(4096, device=timer.device)

    def slow_host_launch():
        time.sleep(300e-6)  # the host takes ≥ 0.3 ms per launch; the kernel a few µs
        x.mul_(1.0001)

    us = timer.median_us(slow_host_launch, reps=20, warmup=2)
    assert timer.queued_ahead
    # Timed from events queued right before each launch, without the wait kernel the span
    # would hold the host's 0.3 ms sleep.
    assert us < 100.0, f"{us:.1f} µs: the span holds host time"


@pytest.mark.gpu
def test_a_function_that_synchronizes_is_reported():
    timer = _timer()
    x = torch.randn(4096, device=timer.device)

    def synchronizing():
        x.mul_(1.0001)
        torch.cuda.synchronize()

    assert timer.median_us(synchronizing, reps=5, warmup=1) > 0.0
    assert not timer.queued_ahead
    timer.median_us(lambda: x.mul_(1.0001), reps=5, warmup=1)
    assert timer.queued_ahead
