"""Analytic attention cost of a sweep cell (``--dry-run`` and the ``est_*`` columns of every row).

The layout is the one the cell's model attends over (from the task config and its overrides, as
``mocbench.eval.cost`` derives it from a checkpoint); sparsity and FLOPs come from
``mocbench.estimate`` per attention layer and forward, FLOPs times the model depth.
"""

from __future__ import annotations

from mocbench.layout import TokenLayout
from mocbench.sweep.spec import SweepCell


def task_layout(cell: SweepCell) -> tuple[TokenLayout, int, int, int]:
    """``(layout, head_dim, heads, depth)`` of the cell's video task."""
    from mocbench.sweep.stages import dotlist
    from mocbench.tasks.config import load_task_config

    t = cell.config.train
    cfg = load_task_config(t.task_config, dotlist(t.overrides))
    d, m = cfg.data, cfg.model
    tpf = (d.height // m.patch_size) * (d.width // m.patch_size)
    frames = -(-d.frames // m.temporal_patch)
    if d.shots == 1:
        layout = TokenLayout.single_shot(text_tokens=d.text_tokens, frames=frames, tokens_per_frame=tpf)
    else:
        layout = TokenLayout.multi_shot(text_tokens=[d.text_tokens] * d.shots, frames=[frames] * d.shots,
                                        tokens_per_frame=tpf)
    return layout, m.dim // m.heads, m.heads, m.depth


def cell_estimate(cell: SweepCell) -> dict:
    import mocbench

    b = cell.config.backend
    out = {}
    if any(s in cell.config.stages for s in ("train", "finetune", "sample", "eval")):
        layout, head_dim, heads, depth = task_layout(cell)
        st = mocbench.estimate(layout, b.name, head_dim=head_dim, heads=heads, **b.params)
        out.update(tokens=layout.num_tokens, est_sparsity=float(st.sparsity), num_chunks=st.num_chunks,
                   est_attn_gflops=depth * st.total_flops / 1e9, est_dense_gflops=depth * st.dense_flops / 1e9)
    if "bench" in cell.config.stages:
        bs = cell.config.bench
        layout = TokenLayout.multi_shot(text_tokens=bs.text_tokens, frames=bs.frames, tokens_per_frame=bs.tokens_per_frame,
                                        shots=bs.shots) if bs.shots > 1 else \
            TokenLayout.single_shot(text_tokens=bs.text_tokens, frames=bs.frames, tokens_per_frame=bs.tokens_per_frame)
        st = mocbench.estimate(layout, b.name, head_dim=bs.head_dim, heads=bs.heads, batch=bs.batch, **b.params)
        out.update(bench_tokens=layout.num_tokens, bench_est_sparsity=float(st.sparsity),
                   bench_est_gflops=st.total_flops / 1e9)
    return out
