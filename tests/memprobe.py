"""Measure the peak resident memory of one bench cell in a fresh child process (test helper).

``python tests/memprobe.py '{"backend": ..., "params": {...}, "workload": {...}, "threads": 1}'``
prints one JSON line: the cell's row status and ``growth_bytes``, the growth of the process's
resident set high-water mark (``VmHWM``) over its resident set just before the cell.

What it measures, honestly: torch's CPU allocations are invisible to ``tracemalloc``, so this
reads the kernel's own accounting. Before the cell, the child warms up on a tiny cell of the
same backend (imports, the fused kernel's ``.so``, thread pools, MKL buffers), returns freed
heap memory to the system (``malloc_trim``) and resets ``VmHWM`` (``/proc/self/clear_refs``);
so ``growth_bytes`` is the peak of memory *touched* by the cell beyond what the process already
held. It can undercount by what the cell reuses from memory that was already resident (small,
after the trim) and by allocations never written; it overcounts by allocator rounding and
fragmentation. Linux only.
"""

from __future__ import annotations

import ctypes
import gc
import json
import sys

import torch


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _cfg(spec: dict, workload: dict):
    from mocbench.bench.config import BackendEntry, BenchConfig, TimingConfig, WorkloadConfig

    return BenchConfig(name="memprobe", backends=[BackendEntry(name=spec["backend"], params=spec.get("params", {}))],
                       workloads=[WorkloadConfig(**workload)],
                       timing=TimingConfig(warmup=0, repeats=1, min_repeat_ms=0.0, max_inner=1),
                       max_memory_gib=spec.get("max_memory_gib"))


def probe(spec: dict) -> dict:
    from mocbench.bench.config import expand_cells
    from mocbench.bench.runner import measure_cell

    torch.set_num_threads(spec.get("threads", 1))
    tiny = {**spec["workload"], "shots": [1], "frames": [2], "tokens_per_frame": 4, "text_tokens": 2}
    cfg = _cfg(spec, tiny)
    measure_cell(expand_cells(cfg)[0], cfg)  # warm-up: imports, kernels, thread pools
    cfg = _cfg(spec, spec["workload"])
    cell = expand_cells(cfg)[0]
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    before = _status("VmRSS")
    row = measure_cell(cell, cfg)
    return {"status": row["status"], "reason": row["reason"], "est_mem_gib": row.get("est_mem_gib"),
            "growth_bytes": _status("VmHWM") - before, "tokens": row["tokens"]}


if __name__ == "__main__":
    print(json.dumps(probe(json.loads(sys.argv[1]))))
