"""Routing introspection: which shot each query shot routes to, per layer and head.

:class:`RoutingRecorder` wraps the backend object an attention layer holds: it calls the real
backend's ``prepare`` then ``forward`` (so outputs are bit-identical) and, for MoC plans, adds
to per-layer statistics:

* ``counts[h, a, b]``: routed slots (non-empty top-k entries) of queries of shot ``a`` whose chunk
  belongs to shot ``b`` (``chunk_shot`` of the layout's chunk table; the query's shot is the
  layout's ``shot_id``), summed over batch, calls (denoising steps, samples);
  ``text_counts`` the same restricted to caption chunks;
* ``pairs`` / ``dense_pairs``: measured attended pairs (``plan_stats``) -> per-layer sparsity;
* ``directed`` / ``mutual``: per call, batch element and head, the shot pairs ``a != b`` with a
  routed slot ``a -> b`` (directed) and the unordered pairs where both ``a -> b`` and ``b -> a``
  (mutual: the feedback loop the paper attributes to non-causal routing).

Nothing in mocbench.backends or mocbench.tasks is modified: :func:`install` swaps the
``backend`` attribute of every ``DiTBlock.attn`` of a loaded task.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mocbench.tasks.sample import sample_checkpoint


class LayerStats:
    def __init__(self, heads: int, shots: int):
        self.counts = torch.zeros(heads, shots, shots, dtype=torch.int64)
        self.text_counts = torch.zeros(heads, shots, shots, dtype=torch.int64)
        self.pairs = 0
        self.dense_pairs = 0
        self.directed = 0
        self.mutual = 0
        self.units = 0  # (call, batch element, head) triples the pair counts are over
        self.calls = 0
        self.queries = 0
        self.slots = 0  # routed (non-empty) slots

    def as_dict(self) -> dict:
        return {"counts": self.counts.tolist(), "text_counts": self.text_counts.tolist(), "pairs": self.pairs,
                "dense_pairs": self.dense_pairs, "sparsity": 1 - self.pairs / self.dense_pairs if self.dense_pairs else 0,
                "directed": self.directed, "mutual": self.mutual, "units": self.units, "calls": self.calls,
                "queries": self.queries, "slots": self.slots}


def shot_routing(plan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(per (B, H, S, S) routed-slot counts, same for text chunks, valid-slot count)`` of one MoC plan."""
    sel = plan.selected  # (B, H, L, K)
    chunks = plan.structure.chunks
    S = plan.layout.num_shots
    B, H, L, K = sel.shape
    valid = sel >= 0
    safe = sel.clamp(min=0).cpu()
    target = chunks.chunk_shot.to(torch.int64)[safe]  # (B, H, L, K)
    is_text = chunks.is_text[safe]
    src = plan.layout.shot_id.to(torch.int64).view(1, 1, L, 1).expand(B, H, L, K)
    flat = (src * S + target).reshape(B * H, -1)
    v = valid.cpu().reshape(B * H, -1)
    counts = torch.zeros(B * H, S * S, dtype=torch.int64)
    counts.scatter_add_(1, flat, v.to(torch.int64))
    text = torch.zeros(B * H, S * S, dtype=torch.int64)
    text.scatter_add_(1, flat, (v & is_text.reshape(B * H, -1)).to(torch.int64))
    return counts.view(B, H, S, S), text.view(B, H, S, S), v


class RoutingRecorder:
    """Drop-in for the backend a layer holds; records MoC routing of every call into ``stats``."""

    def __init__(self, backend, layer: int, store: dict[int, LayerStats]):
        self.backend, self.layer, self.store = backend, layer, store

    def __getattr__(self, name):  # label, params, estimate, ... of the real backend
        return getattr(self.backend, name)

    def __call__(self, q, k, v, layout, *, scale=None, training=False, generator=None):
        plan = self.backend.prepare(q, k, layout, scale=scale, training=training, generator=generator)
        if getattr(plan, "selected", None) is not None:
            self.record(plan)
        return self.backend.forward(q, k, v, plan)

    def record(self, plan) -> None:
        B, H = plan.batch, plan.heads
        S = plan.layout.num_shots
        st = self.store.setdefault(self.layer, LayerStats(H, S))
        counts, text, valid = shot_routing(plan)
        st.counts += counts.sum(0)
        st.text_counts += text.sum(0)
        stats = self.backend.plan_stats(plan)
        st.pairs += int(stats.pairs)
        st.dense_pairs += int(stats.dense_pairs)
        off = counts > 0
        off = off & ~torch.eye(S, dtype=torch.bool)
        st.directed += int(off.sum())
        st.mutual += int((off & off.transpose(-1, -2)).sum()) // 2
        st.units += B * H
        st.calls += 1
        st.queries += B * H * plan.layout.num_tokens
        st.slots += int(valid.sum())


def install(model, store: dict[int, LayerStats]) -> None:
    """Wrap every attention layer's backend of a ``VideoDiT`` (idempotent)."""
    for i, blk in enumerate(model.blocks):
        real = blk.attn.backend
        if isinstance(real, RoutingRecorder):
            real = real.backend
        blk.attn.backend = RoutingRecorder(real, i, store)


def summary(store: dict[int, LayerStats], **info) -> dict:
    layers = [dict(layer=i, **store[i].as_dict()) for i in sorted(store)]
    total = {k: sum(layer[k] for layer in layers) for k in ("pairs", "dense_pairs", "directed", "mutual", "units",
                                                              "slots", "queries")}
    total["sparsity"] = 1 - total["pairs"] / total["dense_pairs"] if total["dense_pairs"] else 0.0
    total["mutual_rate"] = total["mutual"] / total["units"] if total["units"] else 0.0
    shots = len(layers[0]["counts"][0]) if layers else 0
    total["cross_shot_fraction"] = (sum(c for L_ in layers for h in L_["counts"] for a, row in enumerate(h)
                                        for b, c in enumerate(row) if a != b) / total["slots"]) if total["slots"] else 0.0
    return {**info, "shots": shots, "layers": layers, "total": total}


def sample_with_routing(checkpoint: str, out: str | Path, *, overrides: list[str], num: int, seed: int,
                        steps: int | None, routing_path: str | Path | None) -> dict | None:
    """``mocbench sample`` (same files, same videos) with routing recorded into ``routing_path`` (JSON)."""
    store: dict[int, LayerStats] = {}
    loaded = []

    def record(task) -> None:
        loaded.append(task)
        if routing_path is not None:
            install(task.model, store)
            if task.ema is not None and hasattr(task.ema, "blocks"):
                install(task.ema, store)

    sample_checkpoint(checkpoint, out, overrides=overrides, num=num, seed=seed, steps=steps, on_load=record)
    if routing_path is None or not store:
        return None
    task = loaded[0]
    d = task.cfg.data
    layout = task.model.layout_for(d.shots, d.frames, d.height, d.width, d.text_tokens)
    info = summary(store, backend=task.cfg.backend.name, params=dict(task.cfg.backend.params),
                   layout=layout.describe(), checkpoint=str(checkpoint), num=num, seed=seed)
    Path(routing_path).write_text(json.dumps(info))
    return info
