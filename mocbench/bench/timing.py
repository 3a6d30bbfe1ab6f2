"""Timing one callable: warm-up, repeats, median and interquartile range, peak memory.

* CPU: a ``time.perf_counter`` loop. Each repeat runs the call ``inner`` times, with ``inner``
  chosen after warm-up so that a repeat lasts at least ``min_repeat_ms`` (capped by
  ``max_inner``); the per-call time of a repeat is its duration / ``inner``.
* CUDA: one call per repeat between two CUDA events, after overwriting a 256 MiB buffer so
  that no repeat starts with a warm L2 cache; synchronised before reading the events.
* Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA (reset before the timed repeats).
  On CPU torch's allocator is invisible to ``tracemalloc`` and the process RSS high-water mark
  is not per cell, so CPU peak memory is recorded as NaN (``mem_method = "n/a (cpu)"``).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

L2_FLUSH_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Timing:
    """Per-call times in milliseconds of the timed repeats."""

    samples_ms: tuple[float, ...]
    inner: int = 1

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def iqr_ms(self) -> float:
        if len(self.samples_ms) < 2:
            return 0.0
        q = statistics.quantiles(self.samples_ms, n=4, method="inclusive")
        return q[2] - q[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _L2Flusher:
    """Overwrites a buffer larger than any current GPU's L2 before each CUDA repeat."""

    def __init__(self, device: torch.device, enabled: bool):
        self.buf = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.float32, device=device) if enabled else None

    def __call__(self) -> None:
        if self.buf is not None:
            self.buf.zero_()


def time_call(fn: Callable[[], object], device: torch.device | str, *, warmup: int = 2, repeats: int = 7,
              min_repeat_ms: float = 2.0, max_inner: int = 50, l2_flush: bool = True,
              max_seconds: float = math.inf) -> Timing:
    """Time ``fn()`` on ``device``; stops early (keeping at least one repeat) after ``max_seconds``."""
    device = torch.device(device)
    if device.type == "cuda":
        return _time_cuda(fn, device, warmup=warmup, repeats=repeats, l2_flush=l2_flush, max_seconds=max_seconds)
    return _time_cpu(fn, warmup=warmup, repeats=repeats, min_repeat_ms=min_repeat_ms, max_inner=max_inner,
                     max_seconds=max_seconds)


def _time_cpu(fn, *, warmup, repeats, min_repeat_ms, max_inner, max_seconds) -> Timing:
    start = time.perf_counter()
    per_call = math.inf
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        per_call = min(per_call, time.perf_counter() - t0)
    if warmup and per_call > 0:
        inner = max(1, min(max_inner, math.ceil(min_repeat_ms / 1e3 / per_call)))
    else:
        inner = 1
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) * 1e3 / inner)
        if time.perf_counter() - start > max_seconds:
            break
    return Timing(tuple(samples), inner)


def _time_cuda(fn, device, *, warmup, repeats, l2_flush, max_seconds) -> Timing:  # pragma: no cover (GPU)
    flush = _L2Flusher(device, l2_flush)
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    samples = []
    for _ in range(repeats):
        flush()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        samples.append(begin.elapsed_time(end))
        if time.perf_counter() - start > max_seconds:
            break
    return Timing(tuple(samples), 1)


def peak_memory_mb(fn: Callable[[], object], device: torch.device | str) -> tuple[float, str]:
    """(peak MiB allocated while running ``fn`` once, how it was measured)."""
    device = torch.device(device)
    if device.type != "cuda":
        return math.nan, "n/a (cpu)"
    _sync(device)  # pragma: no cover (GPU)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
