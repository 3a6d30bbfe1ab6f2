"""Analytic attention cost of a sweep cell (``--dry-run`` and the ``est_*`` columns of every row).

The layout is the one the cell's model attends over (from the task config and its overrides, as
``mocbench.eval.cost`` derives it from a checkpoint); sparsity and FLOPs come from
``mocbench.estimate`` per attention layer and forward, FLOPs times the model depth.
"""

from __future__ import annotations

import mocbench
from mocbench.config import dotlist
from mocbench.sweep.spec import SweepCell
from mocbench.tasks.config import load_task_config, task_layout


def cell_estimate(cell: SweepCell) -> dict:
    b = cell.config.backend
    out = {}
    if any(s in cell.config.stages for s in ("train", "finetune", "sample", "eval")):
        t = cell.config.train
        cfg = load_task_config(t.task_config, dotlist(t.overrides))
        m, layout = cfg.model, task_layout(cfg)
        st = mocbench.estimate(layout, b.name, head_dim=m.dim // m.heads, heads=m.heads, **b.params)
        out.update(tokens=layout.num_tokens, est_sparsity=float(st.sparsity), num_chunks=st.num_chunks,
                   est_attn_gflops=m.depth * st.total_flops / 1e9, est_dense_gflops=m.depth * st.dense_flops / 1e9)
    if "bench" in cell.config.stages:
        bs = cell.config.bench
        layout = bs.with_counts(bs.shots, bs.frames).build()
        st = mocbench.estimate(layout, b.name, head_dim=bs.head_dim, heads=bs.heads, batch=bs.batch, **b.params)
        out.update(bench_tokens=layout.num_tokens, bench_est_sparsity=float(st.sparsity),
                   bench_est_gflops=st.total_flops / 1e9)
    return out
