"""Timing helpers: median / IQR of the repeats, warm-up calls not timed, CPU memory honestly NaN."""

import math

import pytest

from mocbench.bench.timing import Timing, peak_memory_mb, time_call


def test_median_and_iqr_of_samples():
    t = Timing((1.0, 2.0, 3.0, 4.0, 100.0))
    assert t.median_ms == 3.0 and t.iqr_ms == pytest.approx(2.0)
    assert Timing((5.0,)).iqr_ms == 0.0


def test_time_call_runs_warmup_then_repeats():
    calls = []
    t = time_call(lambda: calls.append(1), "cpu", warmup=2, repeats=3, min_repeat_ms=0, max_inner=1)
    assert len(t.samples_ms) == 3 and len(calls) == 5 and all(s >= 0 for s in t.samples_ms)


def test_cpu_inner_loop_is_capped():
    calls = []
    t = time_call(lambda: calls.append(1), "cpu", warmup=1, repeats=2, min_repeat_ms=1000, max_inner=4)
    assert t.inner == 4 and len(calls) == 1 + 2 * 4


def test_cpu_peak_memory_is_nan_and_says_why():
    mem, how = peak_memory_mb(lambda: None, "cpu")
    assert math.isnan(mem) and "cpu" in how
