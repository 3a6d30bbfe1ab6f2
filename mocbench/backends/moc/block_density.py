"""Block density of MoC (moc-spec §10): measured from a routing plan, analytic where it is determined.

Measured: the anchored blocks (:func:`mocbench.anchors.anchor_blocks`, the same for every batch and head)
OR, per (batch, head), the blocks of the chunks any query of a query block routed to: the distinct
``(query block, chunk)`` hits of ``selected`` joined with the chunks' key blocks. No ``L x L`` tensor; one
``(QB, KB)`` grid at a time.

Analytic (no tensors beyond per-class and per-run tables), exactly where the layout and config determine it:

* routing is never a choice (``top_k = 0``, or no class has more than ``top_k`` candidates): the pattern
  is anchors U every candidate chunk, a static pattern counted from runs;
* tile routing with every piece boundary (and L) on both grids, ``tile`` a multiple of ``bq`` (so a query
  block lies in one tile), and, in every class whose routing is a choice, candidates that all leave the
  same number of keys uncovered (so any ``top_k`` of them cover the same number of key blocks). Then a
  query block of class q touches ``(anchor_size_q + routed_q) / bk`` key blocks.

Everything else is None: "depends on routing". (The spec's condition "every tile has at least top_k
candidates" is implied for the classes that choose; equal candidate sizes are the extra condition without
which the count depends on which chunks are chosen.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mocbench.anchors import AnchorStructure, QueryClasses, anchor_blocks, candidate_square_sums, candidate_totals
from mocbench.backends.moc.tiles import pieces
from mocbench.blocks import density, grid_shape, presence, related_blocks
from mocbench.layout import TokenLayout


def measured_block_density(layout: TokenLayout, structure: AnchorStructure, selected_bhlk: torch.Tensor,
                           block_shape: tuple[int, int]) -> float:
    """Block density of a plan's routing ``selected`` (B, H, L, K), averaged over batch and heads."""
    B, H, L, K = selected_bhlk.shape
    device = selected_bhlk.device
    bq, bk = block_shape
    QB, KB = grid_shape(L, block_shape)
    anchors = anchor_blocks(layout, structure, block_shape).to(device)
    if K == 0:
        return density(anchors)
    ct = structure.chunks
    stop = torch.cumsum(ct.piece_len, 0)
    chunk_keys = presence(stop - ct.piece_len, stop, ct.piece_chunk, bk).to(device)  # (key block, chunk) pairs
    q_block = (torch.arange(L, device=device) // bq)[:, None].expand(L, K)
    touched = 0
    for sel_lk in selected_bhlk.flatten(0, 1):
        routed = sel_lk >= 0
        hits = torch.unique(torch.stack([q_block[routed], sel_lk[routed]], dim=1), dim=0)  # (query block, chunk)
        touched += int((anchors | related_blocks(hits, chunk_keys, (QB, KB))).sum())
    return touched / (B * H * QB * KB)


def analytic_block_density(layout: TokenLayout, classes: QueryClasses, *, top_k: int, causal: bool,
                           tile: int | None, block_shape: tuple[int, int],
                           structure: Callable[[], AnchorStructure]) -> float | None:
    """Block density from the layout and params where they determine it, else None (see the module doc).
    ``structure()`` (the ``Q x C`` tables) is built only when routing takes every candidate of every class."""
    n_cand, sum_u = candidate_totals(classes, causal=causal)
    chooses = n_cand > top_k if top_k > 0 else torch.zeros_like(n_cand, dtype=torch.bool)
    if not bool(chooses.any()):
        grid = anchor_blocks(layout, classes, block_shape)
        if top_k > 0 and bool((n_cand > 0).any()):
            grid |= _all_candidate_blocks(layout, classes, structure(), block_shape)
        return density(grid)
    if tile is None or not _on_grid(layout, classes, tile, block_shape):
        return None
    n, s, sq = (t.tolist() for t in (n_cand, sum_u, candidate_square_sums(classes, causal=causal)))
    routed = []
    for q, choice in enumerate(chooses.tolist()):
        if not choice:
            routed.append(s[q])  # every candidate
        elif n[q] * sq[q] == s[q] * s[q]:  # all candidates equal-sized: any top_k cover top_k * u keys
            routed.append(top_k * (s[q] // n[q]))
        else:
            return None
    bq, bk = block_shape
    QB, KB = grid_shape(layout.num_tokens, block_shape)
    rows = classes.class_size // bq  # query blocks of each class
    cols = (classes.anchor_size + torch.tensor(routed, dtype=torch.int64)) // bk  # key blocks each touches
    return int((rows * cols).sum()) / (QB * KB)


def _on_grid(layout: TokenLayout, classes: QueryClasses, tile: int, block_shape: tuple[int, int]) -> bool:
    """Every piece boundary and L on both grids, and each query block inside one tile."""
    bq, bk = block_shape
    start, stop = pieces(layout, classes.chunks.rule)
    bounds = torch.cat([start, stop])
    on_grid = bool(((bounds % bq == 0) & (bounds % bk == 0)).all())
    return on_grid and (tile % bq == 0 or tile >= layout.num_tokens)


def _all_candidate_blocks(layout: TokenLayout, classes: QueryClasses, structure: AnchorStructure,
                          block_shape: tuple[int, int]) -> torch.Tensor:
    """(QB, KB) bool: query blocks of a class x key blocks of the class's candidate chunks."""
    ct = classes.chunks
    stop = torch.cumsum(ct.piece_len, 0)
    start = stop - ct.piece_len
    piece_class = torch.searchsorted(classes.class_key, ct.piece_chunk * ct.num_shots + ct.piece_shot)
    return related_blocks(presence(start, stop, piece_class, block_shape[0]),
                          presence(start, stop, ct.piece_chunk, block_shape[1]),
                          grid_shape(layout.num_tokens, block_shape), structure.candidate)
