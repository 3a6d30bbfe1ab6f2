"""Mandatory anchors and routing candidates (moc-spec §4-5), computed from the layout only.

Shared by MoC (anchors + routed chunks) and the fixed-sparse baselines (anchors alone).

A query's anchors and candidates depend only on its shot and its chunk, so queries are
grouped into *query classes*: the distinct (chunk, shot) pairs present in the stream
(for content-aligned chunkings a class is just a chunk; a ``fixed:m`` chunk that spans two
shots gives two classes). Everything here is per class, so it is ``Q x C`` with
``Q <= C + S``, never ``L x L``.

Legend: L tokens, C chunks, S shots, Q query classes.

  anchor_size[q]      |A_q|: text tokens (text anchor) U own shot or own chunk (local anchor)
  uncovered[q, c]     tokens of chunk c that are NOT anchors of class q; routing a chunk
                      adds exactly these keys to the attended set
  candidate[q, c]     uncovered > 0 and (not causal or order(c) < order(own chunk))

The ``Q x C`` tables are the readable form, built for routing (:func:`build_anchor_structure`).
Analytic accounting needs only their row sums, which :func:`candidate_totals` computes from
prefix sums over the chunks in ``O(C + Q log Q)`` memory and time: a layout with 16k chunks
would need gigabytes for the tables (``Q x C`` int64) and megabytes for the sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mocbench.blocks import grid_shape, key_columns, presence, related_blocks
from mocbench.chunking import ChunkTable
from mocbench.layout import TokenLayout


@dataclass(frozen=True, eq=False)
class QueryClasses:
    """The query classes of a layout under one chunking and anchor setting: ``(Q,)`` tensors only,
    classes ordered by (chunk, shot)."""

    chunks: ChunkTable
    text_anchor: bool
    local_anchor: str  # "shot" | "chunk"
    class_chunk: torch.Tensor  # (Q,) own chunk of each class
    class_shot: torch.Tensor  # (Q,) shot of each class
    class_size: torch.Tensor  # (Q,) number of query tokens in the class
    anchor_size: torch.Tensor  # (Q,)

    @property
    def num_classes(self) -> int:
        return int(self.class_size.numel())

    @property
    def num_chunks(self) -> int:
        return self.chunks.num_chunks

    @property
    def class_key(self) -> torch.Tensor:
        """(Q,) ascending ``chunk * S + shot`` of every class (for lookups by searchsorted)."""
        return self.class_chunk * self.chunks.num_shots + self.class_shot


def query_classes(layout: TokenLayout, chunking: str, *, text_anchor: bool, local_anchor: str) -> QueryClasses:
    """Classes, their sizes and anchor sizes, from the chunk table's pieces (O(pieces), cached)."""
    key = ("query_classes", chunking, text_anchor, local_anchor)
    cache = layout._cache
    if key in cache:
        return cache[key]
    ct = layout.chunks(chunking)
    S = ct.num_shots
    uniq, inv = torch.unique(ct.piece_chunk * S + ct.piece_shot, return_inverse=True)  # sorted (chunk, shot)
    class_chunk, class_shot = uniq // S, uniq % S
    class_size = torch.zeros(uniq.numel(), dtype=torch.int64).index_add_(0, inv, ct.piece_len)
    m = ct.sizes

    # Text tokens per shot and in total (text chunks are whole captions, each in one shot).
    piece_text = ct.is_text[ct.piece_chunk]
    text_per_shot = torch.zeros(S, dtype=torch.int64).index_add_(0, ct.piece_shot[piece_text], ct.piece_len[piece_text])
    n_text = int(text_per_shot.sum())
    shot_size = torch.zeros(S, dtype=torch.int64).index_add_(0, ct.piece_shot, ct.piece_len)
    if local_anchor == "shot":
        own_local = shot_size[class_shot]
        own_local_text = text_per_shot[class_shot]
    else:
        own_local = m[class_chunk]
        own_local_text = m[class_chunk] * ct.is_text[class_chunk]
    anchor_size = own_local + (n_text - own_local_text if text_anchor else 0)
    out = QueryClasses(ct, text_anchor, local_anchor, class_chunk, class_shot, class_size, anchor_size)
    cache[key] = out
    return out


def candidate_totals(classes: QueryClasses, *, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class ``(Q,)``: the number of candidate chunks and their summed uncovered keys, i.e. the row
    sums of ``candidate`` and ``uncovered * candidate`` of :func:`build_anchor_structure`, exactly, in
    ``O(C + Q log Q)`` without the ``Q x C`` tables.

    A chunk that the text anchor covers is never a candidate; call the others *eligible*. With
    ``local_anchor="chunk"`` the candidates of class q are the eligible chunks other than its own
    (earlier ones, if causal), each with all its tokens uncovered. With ``"shot"``, an eligible chunk c
    leaves ``m_c - overlap(c, shot_q)`` tokens uncovered and is a candidate unless that is 0; the
    overlaps are non-zero only for classes of the same shot, so per-shot prefix sums over the classes
    (ordered by chunk) give the shot's share.
    """
    ct = classes.chunks
    m = ct.sizes
    eligible = (m > 0) & ~(ct.is_text & classes.text_anchor)  # (C,)
    cc = classes.class_chunk
    n_all = _sum_over_chunks(eligible.to(torch.int64), causal, cc)
    sum_all = _sum_over_chunks(eligible * m, causal, cc)
    if classes.local_anchor == "chunk":
        if causal:  # own chunk is not earlier than itself
            return n_all, sum_all
        return n_all - eligible[cc].to(torch.int64), sum_all - eligible[cc] * m[cc]
    # "shot": subtract, per class, what its own shot covers of the eligible chunks in range
    wholly = (eligible[cc] & (classes.class_size == m[cc])).to(torch.int64)  # chunk entirely in that shot
    covered = eligible[cc] * classes.class_size
    n_in = _per_shot_sums(wholly, classes, causal)
    keys_in = _per_shot_sums(covered, classes, causal)
    return n_all - n_in, sum_all - keys_in


def candidate_square_sums(classes: QueryClasses, *, causal: bool) -> torch.Tensor:
    """(Q,) the sum over each class's candidates of their uncovered keys squared, exactly and without the
    ``Q x C`` tables (as :func:`candidate_totals`): with the count and the plain sum it tells whether all of
    a class's candidates leave the same number of keys uncovered (``n * sum u^2 == (sum u)^2``)."""
    ct = classes.chunks
    m = ct.sizes
    eligible = (m > 0) & ~(ct.is_text & classes.text_anchor)
    cc = classes.class_chunk
    sq_all = _sum_over_chunks(eligible * m * m, causal, cc)
    if classes.local_anchor == "chunk":
        return sq_all if causal else sq_all - eligible[cc] * m[cc] * m[cc]
    # "shot": a chunk overlapping the class's shot by o leaves m - o uncovered instead of m
    o = classes.class_size
    return sq_all - _per_shot_sums(eligible[cc] * (m[cc] * m[cc] - (m[cc] - o) * (m[cc] - o)), classes, causal)


def _sum_over_chunks(w_c: torch.Tensor, causal: bool, class_chunk: torch.Tensor) -> torch.Tensor:
    """(Q,) the sum of ``w_c`` over every chunk, or (causal) over the chunks before each class's own."""
    if causal:
        return (torch.cumsum(w_c, 0) - w_c)[class_chunk]  # sum over chunks < c
    return w_c.sum().expand(class_chunk.numel())


def _per_shot_sums(w_q: torch.Tensor, classes: QueryClasses, causal: bool) -> torch.Tensor:
    """For every class q: the sum of ``w`` over the classes of q's shot (causal: with an earlier chunk)."""
    S = classes.chunks.num_shots
    shot = classes.class_shot
    per_shot = torch.zeros(S, dtype=torch.int64).index_add_(0, shot, w_q)
    if not causal:
        return per_shot[shot]
    order = torch.argsort(shot * classes.num_chunks + classes.class_chunk)  # by shot, then chunk
    w_sorted = w_q[order]
    before_shot = torch.cumsum(per_shot, 0) - per_shot  # sum over earlier shots
    prefix_sorted = torch.cumsum(w_sorted, 0) - w_sorted - before_shot[shot[order]]
    out = torch.empty_like(w_q)
    out[order] = prefix_sorted
    return out


@dataclass(frozen=True, eq=False)
class AnchorStructure:
    """The ``Q x C`` anchor and candidate tables of :class:`QueryClasses` (routing and measured counts)."""

    classes: QueryClasses
    causal: bool
    uncovered: torch.Tensor  # (Q, C) int64
    candidate: torch.Tensor  # (Q, C) bool
    token_class: torch.Tensor  # (L,) class of every token

    @property
    def chunks(self) -> ChunkTable:
        return self.classes.chunks

    @property
    def text_anchor(self) -> bool:
        return self.classes.text_anchor

    @property
    def local_anchor(self) -> str:
        return self.classes.local_anchor

    @property
    def class_chunk(self) -> torch.Tensor:
        return self.classes.class_chunk

    @property
    def class_shot(self) -> torch.Tensor:
        return self.classes.class_shot

    @property
    def class_size(self) -> torch.Tensor:
        return self.classes.class_size

    @property
    def anchor_size(self) -> torch.Tensor:
        return self.classes.anchor_size

    @property
    def num_classes(self) -> int:
        return self.classes.num_classes

    @property
    def num_chunks(self) -> int:
        return self.chunks.num_chunks


def build_anchor_structure(
    layout: TokenLayout, chunking: str, *, text_anchor: bool, local_anchor: str, causal: bool,
) -> AnchorStructure:
    """Anchors and candidates per query class, as ``Q x C`` tables (cached on the layout)."""
    key = ("anchors", chunking, text_anchor, local_anchor, causal)
    cache = layout._cache
    if key in cache:
        return cache[key]
    classes = query_classes(layout, chunking, text_anchor=text_anchor, local_anchor=local_anchor)
    ct = classes.chunks
    C = ct.num_chunks
    class_chunk, class_shot = classes.class_chunk, classes.class_shot
    m = ct.sizes  # (C,)

    # Overlap of every chunk with each class's local anchor.
    if local_anchor == "shot":
        local_overlap = ct.shot_overlap[:, class_shot].T  # (Q, C)
    else:
        local_overlap = torch.zeros(len(class_chunk), C, dtype=torch.int64)
        local_overlap[torch.arange(len(class_chunk)), class_chunk] = m[class_chunk]
    covered_by_text = (ct.is_text & text_anchor)[None, :]  # a caption chunk is wholly text
    inter = torch.where(covered_by_text, m[None, :], local_overlap)
    uncovered = m[None, :] - inter

    candidate = uncovered > 0
    if causal:  # chunk indices are sorted by order, so "earlier" is "smaller index"
        candidate &= torch.arange(C)[None, :] < class_chunk[:, None]

    token_class = torch.searchsorted(classes.class_key, ct.chunk_id * ct.num_shots + layout.shot_id)
    out = AnchorStructure(classes, causal, uncovered, candidate, token_class)
    cache[key] = out
    return out


def structure_bytes(*, classes: int, chunks: int, shots: int, tokens: int) -> int:
    """Host bytes of :func:`build_anchor_structure` at its peak: the ``Q x C`` local overlap, its
    text-covered version and ``uncovered`` (int64 each), ``candidate`` and the causal comparison
    (bool), the dense ``C x S`` chunk-shot overlap (cached) and ``token_class`` with its search keys."""
    return classes * chunks * (3 * 8 + 2) + chunks * shots * 8 + 3 * tokens * 8


def anchor_blocks(layout: TokenLayout, classes: AnchorStructure | QueryClasses,
                  block_shape: tuple[int, int], rows: tuple[int, int] | None = None) -> torch.Tensor:
    """(QB, KB) bool: the blocks of the ``bq x bk`` grid holding an anchored pair (moc-spec §10), from the
    chunk table's runs: own shot or own chunk (a query block and a key block meeting the same shot/chunk),
    and every key block holding a caption token when the text anchor is on. Work O(pieces + touched blocks).
    ``rows=(q0, q1)``: only that band of query blocks."""
    ct = classes.chunks
    bq, bk = block_shape
    QB, KB = grid_shape(layout.num_tokens, block_shape)
    stop = torch.cumsum(ct.piece_len, 0)
    start = stop - ct.piece_len
    group = ct.piece_shot if classes.local_anchor == "shot" else ct.piece_chunk
    grid = related_blocks(presence(start, stop, group, bq), presence(start, stop, group, bk), (QB, KB), rows=rows)
    if classes.text_anchor:
        text = ct.is_text[ct.piece_chunk]
        grid |= key_columns(start[text], stop[text], bk, KB)[None, :]
    return grid


def anchor_mask(layout: TokenLayout, structure: AnchorStructure | QueryClasses) -> torch.Tensor:
    """(L, L) bool: True where query i must attend key j. Reference/inspection sizes only."""
    ct = structure.chunks
    is_text = layout.is_text
    mask = torch.zeros(layout.num_tokens, layout.num_tokens, dtype=torch.bool)
    if structure.text_anchor:
        mask |= is_text[None, :]
    if structure.local_anchor == "shot":
        mask |= layout.shot_id[:, None] == layout.shot_id[None, :]
    else:
        mask |= ct.chunk_id[:, None] == ct.chunk_id[None, :]
    return mask
