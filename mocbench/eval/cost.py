"""Cost columns of the paper tables: sparsity and attention FLOPs (analytic) and sampling latency.

Sparsity and FLOPs come from the backend's analytic accounting (``backend.estimate``) on the token
layout the model attends over, per attention layer and forward pass, times the model depth; for
content-routed backends (MoC) the estimate uses the configured ``top_k``, not the routing of a
particular video. Latency is the wall time ``mocbench paper`` measured while sampling the set
(``timing.json`` in the samples folder; absent for sets sampled by hand).
"""

from __future__ import annotations

import json
from pathlib import Path

from mocbench.eval.samples import SampleSet
from mocbench.registry import get_backend
from mocbench.tasks.checkpoint import read_checkpoint
from mocbench.tasks.config import load_task_config, task_layout


def attention_cost(checkpoint: str | Path, backend: str, backend_params: dict) -> dict[str, float]:
    """Sparsity, per-sample attention FLOPs (all layers, one forward) and the dense FLOPs for scale."""
    hp = read_checkpoint(checkpoint, "cost: checkpoint")["hyper_parameters"]
    cfg = load_task_config(base=hp["config"])
    m, layout = cfg.model, task_layout(cfg)
    stats = get_backend(backend, **backend_params).estimate(layout, head_dim=m.dim // m.heads, heads=m.heads)
    return {"sparsity": float(stats.sparsity), "attn_gflops": m.depth * stats.total_flops / 1e9,
            "dense_attn_gflops": m.depth * stats.dense_flops / 1e9, "tokens": layout.num_tokens}


def sampling_latency(samples: SampleSet) -> dict[str, float]:
    """``latency_s_per_video`` from ``timing.json`` (written by ``mocbench paper``), if present."""
    path = samples.root / "timing.json"
    if not path.is_file():
        return {}
    t = json.loads(path.read_text())
    return {"latency_s_per_video": float(t["seconds"]) / max(1, int(t["num"])), "latency_threads": t.get("threads", "")}


def cost_scores(samples: SampleSet) -> dict[str, float]:
    return {**attention_cost(samples.checkpoint, samples.backend, samples.backend_params), **sampling_latency(samples)}
