"""Timing one callable: warm-up, repeats, median and interquartile range, peak memory.

* CPU: a ``time.perf_counter`` loop. Each repeat runs the call ``inner`` times, with ``inner``
  chosen after warm-up so that a repeat lasts at least ``min_repeat_ms`` (capped by
  ``max_inner``); the per-call time of a repeat is its duration / ``inner``.
* CUDA: one call per repeat between two CUDA events, after overwriting a 256 MiB buffer so
  that no repeat starts with a warm L2 cache; synchronised before reading the events.
* Side by side (:func:`time_pair`): a reference and a subject, their repeats alternating, so a
  speed-up is a ratio measured in one run on the same inputs (median and IQR of per-repeat ratios).
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


class _Timer:
    """One callable on one device: warm-up (which, on CPU, picks ``inner``), then one repeat at a time."""

    def __init__(self, fn: Callable[[], object], device: torch.device, *, warmup: int, min_repeat_ms: float,
                 max_inner: int, flush: _L2Flusher | None):
        self.fn, self.device, self.flush = fn, device, flush
        per_call = math.inf
        for _ in range(warmup):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            per_call = min(per_call, time.perf_counter() - t0)
        self.inner = 1
        if device.type != "cuda" and warmup and per_call > 0:
            self.inner = max(1, min(max_inner, math.ceil(min_repeat_ms / 1e3 / per_call)))

    def repeat_ms(self) -> float:
        """Per-call time of one repeat: ``inner`` calls timed by ``perf_counter`` on CPU; on CUDA one call
        between two CUDA events after an L2 flush."""
        if self.device.type == "cuda":  # pragma: no cover (GPU)
            if self.flush is not None:
                self.flush()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            self.fn()
            end.record()
            torch.cuda.synchronize(self.device)
            return begin.elapsed_time(end)
        t0 = time.perf_counter()
        for _ in range(self.inner):
            self.fn()
        return (time.perf_counter() - t0) * 1e3 / self.inner


def time_call(fn: Callable[[], object], device: torch.device | str, *, warmup: int = 2, repeats: int = 7,
              min_repeat_ms: float = 2.0, max_inner: int = 50, l2_flush: bool = True,
              max_seconds: float = math.inf) -> Timing:
    """Time ``fn()`` on ``device``; stops early (keeping at least one repeat) after ``max_seconds``."""
    device = torch.device(device)
    flush = _L2Flusher(device, l2_flush) if device.type == "cuda" else None
    timer = _Timer(fn, device, warmup=warmup, min_repeat_ms=min_repeat_ms, max_inner=max_inner, flush=flush)
    start, samples = time.perf_counter(), []
    for _ in range(repeats):
        samples.append(timer.repeat_ms())
        if time.perf_counter() - start > max_seconds:
            break
    return Timing(tuple(samples), timer.inner)


@dataclass(frozen=True)
class PairedTiming:
    """Two callables timed side by side: their repeats alternate (in alternating order, so drift in
    the machine's speed hits both alike); ``ratio_*`` are over the per-repeat ratios reference / subject."""

    reference: Timing
    subject: Timing

    @property
    def ratios(self) -> tuple[float, ...]:
        return tuple(r / s for r, s in zip(self.reference.samples_ms, self.subject.samples_ms) if s > 0)

    @property
    def ratio_median(self) -> float:
        return statistics.median(self.ratios) if self.ratios else math.nan

    @property
    def ratio_iqr(self) -> float:
        return Timing(self.ratios).iqr_ms if self.ratios else math.nan


def time_pair(reference: Callable[[], object], subject: Callable[[], object], device: torch.device | str, *,
              warmup: int = 2, repeats: int = 7, min_repeat_ms: float = 2.0, max_inner: int = 50,
              l2_flush: bool = True, max_seconds: float = math.inf) -> PairedTiming:
    """Time ``reference()`` and ``subject()`` interleaved, repeat by repeat (see :class:`PairedTiming`)."""
    device = torch.device(device)
    flush = _L2Flusher(device, l2_flush) if device.type == "cuda" else None
    opts = {"warmup": warmup, "min_repeat_ms": min_repeat_ms, "max_inner": max_inner, "flush": flush}
    timers = (_Timer(reference, device, **opts), _Timer(subject, device, **opts))
    start, samples = time.perf_counter(), ([], [])
    for i in range(repeats):
        for which in ((0, 1) if i % 2 == 0 else (1, 0)):
            samples[which].append(timers[which].repeat_ms())
        if time.perf_counter() - start > max_seconds:
            break
    return PairedTiming(Timing(tuple(samples[0]), timers[0].inner), Timing(tuple(samples[1]), timers[1].inner))


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
