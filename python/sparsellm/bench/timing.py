"""GPU timing in the style every benchmark here uses: warm-up, then many
launches each timed by CUDA events with the L2 cache flushed before it (a
decode step reads each weight once, so a warm L2 would flatter small weights);
the median is reported.

The flush reads a 256 MiB buffer, leaving L2 full of clean lines, as a decode
step finds it (the previous layer's weights). Flushing by writing left ~50 MB
of dirty lines whose write-back the timed kernel paid: about 9 µs on an H100,
added to every kernel whatever its size (docs/kernel-notes.md).

Each launch is timed from an event queued just before it, so the GPU must never
reach that event before the host has queued the launch: a host that falls
behind (a stall of a few milliseconds, or a Python call slower than a small
kernel plus the flush) would otherwise add its own delay to the span. The GPU
is therefore held in a wait kernel while the host queues every launch of a
case; if the first start event has run by the time the host is done, the wait
is lengthened and the case timed again."""
from __future__ import annotations

import statistics


# GPU clock cycles the wait kernel spins per launch to be queued (≈ 0.2 ms at 2 GHz; a
# Python launch takes 20-100 µs), and how often a case is retimed with a 4× longer wait.
HOLD_CYCLES_PER_LAUNCH = 400_000
HOLD_ATTEMPTS = 4


class Timer:
    def __init__(self, torch, device, flush_bytes: int = 256 << 20):
        self.torch = torch
        self.device = device
        self.flush = torch.ones(flush_bytes // 4, dtype=torch.int32, device=device)
        # False after a case whose launches could not all be queued ahead of the GPU
        # (fn synchronizes, or the host stalled in every attempt): its times may hold host delay.
        self.queued_ahead = True

    def median_us(self, fn, reps: int = 50, warmup: int = 5) -> float:
        torch = self.torch
        for _ in range(warmup):
            fn()
        hold_cycles = reps * HOLD_CYCLES_PER_LAUNCH
        for _ in range(HOLD_ATTEMPTS):
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
            torch.cuda._sleep(hold_cycles)
            for i in range(reps):
                self.flush.sum()
                starts[i].record()
                fn()
                ends[i].record()
            self.queued_ahead = not starts[0].query()
            torch.cuda.synchronize(self.device)
            if self.queued_ahead:
                break
            hold_cycles *= 4
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1e3

    def copy_gbps(self, nbytes: int = 2 << 30) -> float:
        """Device-to-device copy rate, counting bytes read plus bytes written."""
        torch = self.torch
        src = torch.empty(nbytes // 2, dtype=torch.uint8, device=self.device).random_()
        dst = torch.empty_like(src)
        us = self.median_us(lambda: dst.copy_(src), reps=20, warmup=3)
        return 2 * src.numel() / (us * 1e-6) / 1e9
