"""Routing in blocks of rows (issue 13, deliverable 4): no (B, H, L, C) score tensor, same selection.

``route`` scores a block of routing rows at a time. These tests pin that the blocked routing is the
unblocked one exactly -- eval and training draws, per-token and tile routing, ties included (chunks with
identical keys give identical scores, and the tie-break is torch.topk's on the same row) -- by comparing
a tiny block budget (one row or a few per block) with an unbounded one and with the unblocked algorithm as
it stood before blocking (kept below, verbatim in substance).
"""

from __future__ import annotations

import random

import pytest
import torch
from conftest import kind_of, random_layout

import mocbench
from mocbench.backends.moc.routing import chunk_descriptors, route, row_blocks, selected_to_chunk_mask

HUGE = 1 << 40


def unblocked_route(q, k, structure, top_k, *, p_drop_off=0.0, p_drop_in=0.0, n_drop_in=0, generator=None):
    """Per-token routing with the whole (B, H, L, C) score tensor, as before blocking (the reference)."""
    B, H, L, _ = q.shape
    C = structure.num_chunks
    k_eff = min(top_k, int(structure.candidate.sum(1).max()) if C else 0)
    if k_eff == 0 and not (p_drop_in > 0 and n_drop_in > 0):
        return torch.empty(B, H, L, 0, dtype=torch.int64)
    cand_lc = structure.candidate[structure.token_class]
    selected = torch.empty(B, H, L, 0, dtype=torch.int64)
    if k_eff > 0:
        phi = chunk_descriptors(k, structure)
        scores = q.to(phi.dtype) @ phi.transpose(-1, -2)
        scores.masked_fill_(~cand_lc, float("-inf"))
        top_val, top_idx = scores.topk(k_eff, dim=-1)
        selected = top_idx.masked_fill_(top_val == float("-inf"), -1)
    extra = None
    if p_drop_in > 0 and n_drop_in > 0:
        noise = torch.rand(B, H, L, C, generator=generator)
        free = cand_lc & ~selected_to_chunk_mask(selected, C)
        extra_val, extra_idx = noise.masked_fill(~free, -1.0).topk(min(n_drop_in, C), dim=-1)
        lucky = torch.rand(B, H, L, 1, generator=generator) < p_drop_in
        extra = torch.where((extra_val >= 0) & lucky, extra_idx, -1)
    if p_drop_off > 0 and selected.shape[-1]:
        drop = torch.rand(selected.shape, generator=generator) < p_drop_off
        selected = selected.masked_fill(drop, -1)
    return selected if extra is None else torch.cat([selected, extra], dim=-1)


def _inputs(seed: int, *, ties: bool):
    rng = random.Random(seed)
    layout = random_layout(rng, kind_of(seed))
    rule = rng.choice(("frame", "tokens:3", "fixed:4", "frames:2"))
    params = dict(top_k=rng.randint(1, 4), chunking=rule, causal=rng.random() < 0.5,
                  local_anchor=rng.choice((None, "shot", "chunk")))
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(2, 3, layout.num_tokens, 8, generator=g) for _ in range(2))
    if ties:  # every key equals the first: all chunk descriptors, hence all scores of a row, tie
        k[:, :, :] = k[:, :, :1]
    return layout, params, q, k


@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("seed", range(10))
def test_blocked_routing_equals_the_unblocked_algorithm(seed, ties):
    """Eval and training: blocks of 1 row, of a few rows, and one block give the pre-blocking selection."""
    layout, params, q, k = _inputs(seed, ties=ties)
    structure = mocbench.get_backend("moc", **params).structure(layout)
    C = structure.num_chunks
    for reg in ({}, {"p_drop_off": 0.3, "p_drop_in": 0.7, "n_drop_in": 2}):
        want = unblocked_route(q, k, structure, params["top_k"], **reg, generator=torch.Generator().manual_seed(1))
        for budget in (1, 3 * 12 * (C + 2), HUGE):
            got = route(q, k, structure, params["top_k"], **reg, generator=torch.Generator().manual_seed(1),
                        block_bytes=budget)
            assert torch.equal(got, want), f"budget {budget}, regularisers {reg}"


@pytest.mark.parametrize("seed", range(6))
def test_blocked_tile_routing_equals_one_block(seed):
    layout, params, q, k = _inputs(seed, ties=seed % 2 == 1)
    backend = mocbench.get_backend("moc", **params, routing="tile", tile=3)
    structure, tiles = backend.structure(layout), backend.tiles(layout)
    for reg in ({}, {"p_drop_off": 0.5, "p_drop_in": 0.5, "n_drop_in": 1}):
        got = [route(q, k, structure, params["top_k"], tiles=tiles, **reg, block_bytes=budget,
                     generator=torch.Generator().manual_seed(2)) for budget in (1, 200, HUGE)]
        assert torch.equal(got[0], got[2]) and torch.equal(got[1], got[2])


@pytest.mark.parametrize("bh,rows,row_bytes,budget", [(1, 1, 8, 1), (3, 10, 8, 1), (3, 10, 8, 35), (3, 10, 8, 80),
                                                      (3, 10, 8, 400), (5, 7, 10, 10**9), (2, 9, 0, 5)])
def test_row_blocks_cover_every_row_once_in_order_within_budget(bh, rows, row_bytes, budget):
    seen = []
    for a, b, u0, u1 in row_blocks(bh, rows, row_bytes, budget):
        n = (b - a) * (u1 - u0)
        assert n >= 1 and (n == 1 or n * row_bytes <= budget)
        assert b - a == 1 or (u0, u1) == (0, rows)
        seen += [(i, u) for i in range(a, b) for u in range(u0, u1)]
    assert seen == [(i, u) for i in range(bh) for u in range(rows)]
