"""Cheap stage functions for sweep tests that run cells in other processes (submitit's local executor,
the local GPU pool): importable by name there (the tests put this folder on PYTHONPATH), deterministic
results, every call logged to ``OUT/calls.log``, and a cell that blocks when told to so a test can kill
its job mid-way.

To block: create ``OUT/hold/<key>``; the first call for that cell writes its pid to
``OUT/hold/<key>.started`` and sleeps; a later call (after the kill) finds that file and runs normally.
"""

from __future__ import annotations

import os
import time


def bench(cell, ctx) -> dict:
    with open(ctx.out / "calls.log", "a") as f:
        f.write(cell.key + "\n")
    hold = ctx.out / "hold" / cell.key
    started = hold.with_name(cell.key + ".started")
    if hold.is_file() and not started.exists():
        started.write_text(str(os.getpid()))
        time.sleep(300)  # killed by the test long before this ends
    p = cell.config.backend.params
    return {"bench_total_ms": 1.0 + p["top_k"] + 0.5 * p["causal"], "metric": p["top_k"] * 10 + p["causal"]}


def train(cell, ctx) -> dict:
    with open(ctx.out / "calls.log", "a") as f:
        f.write(f"train {cell.config.seed}\n")
    return {"checkpoint": f"ckpt-seed{cell.config.seed}"}
