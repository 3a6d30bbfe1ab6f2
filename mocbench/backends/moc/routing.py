"""MoC routing: which chunks each query attends beyond its anchors (moc-spec §5-6, §9).

The paper's equations, per (batch, head):

    phi_c      = mean_{j in chunk c} k_j                          (chunk descriptor)
    s_ic       = q_i . phi_c                                      (relevance score)
    Omega(q_i) = top-k_{c in candidates(i)} s_ic                  (routed chunks)

Tile routing (``routing="tile"``, §9) decides once per query tile t (queries of one chunk, one segment
and one grid cell of ``tile`` positions, so of one candidate set), by the tile's mean query:

    qbar_t = mean_{i in t} q_i,   s_tc = qbar_t . phi_c,   Omega(t) = top-k_c s_tc,   Omega(q_i) = Omega(t(i))

Candidates exclude chunks wholly covered by i's anchors and, with causal routing, chunks
that do not start before i's own chunk (no chunk routes to itself or to a later one).
Anchored chunks never consume the top-k budget. Routing runs without gradients; q, k, v
still get gradients through the attention itself.

Scores are computed for a block of routing rows (queries, or tiles) at a time and reduced to their
top-k at once (:func:`top_k_chunks`), so no (B, H, L, C) tensor exists: a block holds at most
``ROUTING_BLOCK_BYTES`` (or one row). Blocks are consecutive rows in (batch, head, row) order, so the
training draws and every row's top-k (ties included) are those of one unblocked pass.

Legend: B batch, H heads, L tokens, U routing rows (L, or T tiles), C chunks, D head_dim, K routed
slots per query. ``selected`` is ``(B, H, L, K)`` int64 chunk indices, ``-1`` for an empty slot; ``K``
is ``top_k`` capped at the largest number of candidates any query has (plus drop-in slots).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from mocbench.anchors import AnchorStructure
from mocbench.backends.moc.sizes import MoCSizes
from mocbench.backends.moc.tiles import QueryTiles
from mocbench.pooling import pool_chunks, pool_dtype

# Scores are accumulated in at least float32 (pool_dtype) so every implementation routes identically.
# Peak bytes of one block of routing rows (scores, masks, top-k): the routing memory no longer grows with L*C.
ROUTING_BLOCK_BYTES = 64 << 20


def chunk_descriptors(k_bhld: torch.Tensor, structure: AnchorStructure) -> torch.Tensor:
    """phi: (B, H, C, D) mean-pooled keys of every chunk, in :func:`~mocbench.pooling.pool_dtype`."""
    return pool_chunks(k_bhld, structure.chunks)


@torch.no_grad()
def route(
    q_bhld: torch.Tensor, k_bhld: torch.Tensor, structure: AnchorStructure, top_k: int, *,
    tiles: QueryTiles | None = None, p_drop_off: float = 0.0, p_drop_in: float = 0.0, n_drop_in: int = 0,
    generator: torch.Generator | None = None, block_bytes: int = ROUTING_BLOCK_BYTES,
) -> torch.Tensor:
    """Top-k chunk selection per (batch, head, query), or per query tile with ``tiles`` (every query of a
    tile gets the tile's selection and shares its training draws). Returns ``selected`` (B, H, L, K)."""
    B, H, L, _ = q_bhld.shape
    device = q_bhld.device
    C = structure.num_chunks
    k_eff = min(top_k, int(structure.candidate.sum(1).max()) if C else 0)  # no query has more candidates
    drop_in = p_drop_in > 0 and n_drop_in > 0
    if k_eff == 0 and not drop_in:
        return torch.empty(B, H, L, 0, dtype=torch.int64, device=device)
    dt = pool_dtype(k_bhld.dtype)
    if tiles is None:  # routing rows: the queries ...
        rows_bhud, row_class = q_bhld, structure.token_class
    else:  # ... or the mean query of every tile (its queries share one class)
        rows_bhud, row_class = tiles.mean_queries(q_bhld, dt), structure.token_class[tiles.tile_start]
    row_class, candidate = row_class.to(device), structure.candidate.to(device)
    U = rows_bhud.shape[2]

    selected = torch.empty(B, H, U, 0, dtype=torch.int64, device=device)
    if k_eff > 0:
        phi = chunk_descriptors(k_bhld, structure)
        selected = top_k_chunks(rows_bhud, phi, candidate, row_class, k_eff, block_bytes=block_bytes)
    extra = None
    if drop_in:
        # Context drop-in: some rows get extra random candidates they did not pick.
        extra = _drop_in_choices(selected, candidate, row_class, min(n_drop_in, C), generator, block_bytes)
        lucky = torch.rand(B, H, U, 1, device=device, generator=generator) < p_drop_in
        extra = extra.masked_fill_(~lucky, -1)
    if p_drop_off > 0 and selected.shape[-1]:
        # Context drop-off: routed (never anchored) chunks are dropped at random.
        drop = torch.rand(selected.shape, device=device, generator=generator) < p_drop_off
        selected = selected.masked_fill(drop, -1)
    if extra is not None:
        selected = torch.cat([selected, extra], dim=-1)
    if tiles is not None:  # every query of a tile gets the tile's selection
        selected = selected.index_select(2, tiles.token_tile.to(device))
    return selected


def top_k_chunks(rows_bhud: torch.Tensor, phi_bhcd: torch.Tensor, candidate_qc: torch.Tensor,
                 row_class: torch.Tensor, k: int, *, block_bytes: int = ROUTING_BLOCK_BYTES) -> torch.Tensor:
    """(B, H, U, k) the k candidates of largest score ``row . phi_c`` per routing row (``-1`` where a row
    has fewer), a block of rows at a time."""
    B, H, U, _ = rows_bhud.shape
    C = phi_bhcd.shape[2]
    out = torch.empty(B * H, U, k, dtype=torch.int64, device=rows_bhud.device)
    rows, phi = rows_bhud.flatten(0, 1), phi_bhcd.flatten(0, 1)
    for a, b, u0, u1 in row_blocks(B * H, U, _row_bytes(C, k, phi.element_size()), block_bytes):
        scores = rows[a:b, u0:u1].to(phi.dtype) @ phi[a:b].transpose(-1, -2)  # (bh, u, C) s_uc
        scores.masked_fill_(~candidate_qc[row_class[u0:u1]], float("-inf"))
        top_val, top_idx = scores.topk(k, dim=-1)
        out[a:b, u0:u1] = top_idx.masked_fill_(top_val == float("-inf"), -1)
    return out.view(B, H, U, k)


def _drop_in_choices(selected: torch.Tensor, candidate_qc: torch.Tensor, row_class: torch.Tensor, n_in: int,
                     generator: torch.Generator | None, block_bytes: int) -> torch.Tensor:
    """(B, H, U, n_in) up to ``n_in`` random candidates per row that it did not select (-1: none left)."""
    B, H, U, _ = selected.shape
    C = candidate_qc.shape[1]
    out = torch.empty(B * H, U, n_in, dtype=torch.int64, device=selected.device)
    sel = selected.flatten(0, 1)
    for a, b, u0, u1 in row_blocks(B * H, U, _row_bytes(C, n_in, 4), block_bytes):
        noise = torch.rand(b - a, u1 - u0, C, device=selected.device, generator=generator)
        free = candidate_qc[row_class[u0:u1]] & ~selected_to_chunk_mask(sel[a:b, u0:u1], C)
        extra_val, extra_idx = noise.masked_fill_(~free, -1.0).topk(n_in, dim=-1)
        out[a:b, u0:u1] = extra_idx.masked_fill_(extra_val < 0, -1)
    return out.view(B, H, U, n_in)


def row_blocks(bh: int, rows: int, row_bytes: int, budget: int) -> Iterator[tuple[int, int, int, int]]:
    """Consecutive blocks ``(bh0, bh1, u0, u1)`` of the (bh, rows) grid in row-major order, each of at most
    ``budget`` bytes at ``row_bytes`` a row (at least one row): whole (batch, head) slices when they fit,
    else pieces of one slice."""
    per_block = max(1, budget // max(1, row_bytes))
    if per_block >= rows:
        step = per_block // max(1, rows)
        for a in range(0, bh, step):
            yield a, min(bh, a + step), 0, rows
        return
    for a in range(bh):
        for u0 in range(0, rows, per_block):
            yield a, a + 1, u0, min(rows, u0 + per_block)


def _row_bytes(chunks: int, k: int, itemsize: int) -> int:
    """Bytes one routing row holds in a block: its scores (or drop-in noise), the gathered candidate row,
    its negation and the selection mask (bool, C + 1), then the top-k values, indices and tests."""
    return chunks * (itemsize + 4) + 2 + k * (itemsize + 8 + 2)


def routing_bytes(s: MoCSizes) -> int:
    """Device bytes :func:`route` allocates at its peak in eval mode, ``selected`` itself excluded:
    pooled keys phi (B, H, C, D) and their mean in the routing dtype (float32 or wider), with float32
    copies of k (and q, when a block's rows are cast or a non-contiguous q is flattened); the top-k of
    every row (int64) and one block of scores and masks (at most ``ROUTING_BLOCK_BYTES``, or one row);
    with tile routing the mean queries (B, H, T, D) and the tile-level selection; on CUDA the candidate
    table and token classes copied to the device."""
    if not s.slots:
        return 0
    r, D, C = s.f, s.head_dim, s.chunks
    rows = s.bh * (s.tiles or s.tokens)  # routing rows: queries, or tiles
    block_rows = min(rows, max(1, ROUTING_BLOCK_BYTES // _row_bytes(C, s.slots, r)))
    total = 2 * s.bh * C * D * r + 2 * s.rows * D * r + block_rows * _row_bytes(C, s.slots, r)
    if s.tiles:
        total += 2 * rows * D * r + rows * s.slots * 8  # qbar and its sum; the per-tile selection
    if not s.on_cpu:
        total += s.classes * C + s.tokens * 8
    return total


def selected_to_chunk_mask(selected: torch.Tensor, num_chunks: int) -> torch.Tensor:
    """(..., K) chunk indices with -1 for empty -> (..., C) bool membership."""
    hot = torch.zeros(*selected.shape[:-1], num_chunks + 1, dtype=torch.bool, device=selected.device)
    hot.scatter_(-1, torch.where(selected < 0, num_chunks, selected), True)
    return hot[..., :num_chunks]
