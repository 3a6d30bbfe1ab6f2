"""MoC routing: which chunks each query attends beyond its anchors (moc-spec §5-6).

The paper's equations, per (batch, head):

    phi_c     = mean_{j in chunk c} k_j                          (chunk descriptor)
    s_ic      = q_i . phi_c                                      (relevance score)
    Omega(q_i) = top-k_{c in candidates(i)} s_ic                 (routed chunks)

Candidates exclude chunks wholly covered by i's anchors and, with causal routing, chunks
that do not start before i's own chunk (no chunk routes to itself or to a later one).
Anchored chunks never consume the top-k budget. Routing runs without gradients; q, k, v
still get gradients through the attention itself.

Legend: B batch, H heads, L tokens, C chunks, D head_dim, K routed slots per query.
``selected`` is ``(B, H, L, K)`` int64 chunk indices, ``-1`` for an empty slot; ``K`` is
``top_k`` capped at the largest number of candidates any query has (plus drop-in slots).
"""

from __future__ import annotations

import torch

from mocbench.backends.moc.sizes import MoCSizes
from mocbench.anchors import AnchorStructure

# Scores are accumulated in at least float32 so every implementation routes identically.
_MIN_ROUTING_DTYPE = torch.float32


def routing_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, _MIN_ROUTING_DTYPE)


def chunk_descriptors(k_bhld: torch.Tensor, structure: AnchorStructure) -> torch.Tensor:
    """phi: (B, H, C, D) mean-pooled keys of every chunk."""
    ct = structure.chunks
    B, H, _, D = k_bhld.shape
    dt = routing_dtype(k_bhld.dtype)
    chunk_id = ct.chunk_id.to(k_bhld.device)
    phi = torch.zeros(B, H, ct.num_chunks, D, dtype=dt, device=k_bhld.device)
    phi.index_add_(2, chunk_id, k_bhld.to(dt))
    return phi / ct.sizes.to(device=k_bhld.device, dtype=dt)[:, None]


@torch.no_grad()
def route(
    q_bhld: torch.Tensor, k_bhld: torch.Tensor, structure: AnchorStructure, top_k: int, *,
    p_drop_off: float = 0.0, p_drop_in: float = 0.0, n_drop_in: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Top-k chunk selection per (batch, head, query). Returns ``selected`` (B, H, L, K)."""
    B, H, L, _ = q_bhld.shape
    device = q_bhld.device
    C = structure.num_chunks
    k_eff = min(top_k, int(structure.candidate.sum(1).max()) if C else 0)  # no query has more candidates
    if k_eff == 0 and not (p_drop_in > 0 and n_drop_in > 0):
        return torch.empty(B, H, L, 0, dtype=torch.int64, device=device)
    token_class = structure.token_class.to(device)
    cand_lc = structure.candidate.to(device)[token_class]  # (L, C)

    selected = torch.empty(B, H, L, 0, dtype=torch.int64, device=device)
    if k_eff > 0:
        phi = chunk_descriptors(k_bhld, structure)
        scores = q_bhld.to(phi.dtype) @ phi.transpose(-1, -2)  # (B, H, L, C)
        scores.masked_fill_(~cand_lc, float("-inf"))
        top_val, top_idx = scores.topk(k_eff, dim=-1)
        selected = top_idx.masked_fill_(top_val == float("-inf"), -1)

    if p_drop_in > 0 and n_drop_in > 0:
        # Context drop-in: some queries get extra random candidates they did not pick.
        n_in = min(n_drop_in, C)
        noise = torch.rand(B, H, L, C, device=device, generator=generator)
        free = cand_lc & ~selected_to_chunk_mask(selected, C)  # (B, H, L, C)
        noise = noise.masked_fill(~free, -1.0)
        extra_val, extra_idx = noise.topk(n_in, dim=-1)
        lucky = torch.rand(B, H, L, 1, device=device, generator=generator) < p_drop_in
        extra = torch.where((extra_val >= 0) & lucky, extra_idx, -1)
    else:
        extra = None

    if p_drop_off > 0 and selected.shape[-1]:
        # Context drop-off: routed (never anchored) chunks are dropped at random.
        drop = torch.rand(selected.shape, device=device, generator=generator) < p_drop_off
        selected = selected.masked_fill(drop, -1)
    if extra is not None:
        selected = torch.cat([selected, extra], dim=-1)
    return selected


def routing_bytes(s: MoCSizes) -> int:
    """Device bytes :func:`route` allocates at its peak in eval mode, ``selected`` itself excluded:
    the (L, C) candidate map and its negation, pooled keys phi (B, H, C, D) and their mean, the
    (B, H, L, C) scores, top-k values and the ``-inf`` test, in the routing dtype (float32 or
    wider); float32 copies of k and q for half types; on CUDA the candidate table and token
    classes copied to the device."""
    if not s.slots:
        return 0
    r, D, L, C = s.f, s.head_dim, s.tokens, s.chunks
    total = 2 * L * C + 2 * s.bh * C * D * r + s.bh * L * C * r + s.pairs * (r + 1)
    if s.e != r:
        total += 2 * s.rows * D * r
    if not s.on_cpu:
        total += s.classes * C + L * 8
    return total


def selected_to_chunk_mask(selected: torch.Tensor, num_chunks: int) -> torch.Tensor:
    """(..., K) chunk indices with -1 for empty -> (..., C) bool membership."""
    hot = torch.zeros(*selected.shape[:-1], num_chunks + 1, dtype=torch.bool, device=selected.device)
    hot.scatter_(-1, torch.where(selected < 0, num_chunks, selected), True)
    return hot[..., :num_chunks]

