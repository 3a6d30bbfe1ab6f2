"""Mandatory anchors and routing candidates of MoC (moc-spec §4-5), computed from the layout only.

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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mocbench.chunking import ChunkTable
from mocbench.layout import TokenLayout


@dataclass(frozen=True, eq=False)
class AnchorStructure:
    chunks: ChunkTable
    text_anchor: bool
    local_anchor: str  # "shot" | "chunk"
    causal: bool
    class_chunk: torch.Tensor  # (Q,) own chunk of each class
    class_shot: torch.Tensor  # (Q,) shot of each class
    class_size: torch.Tensor  # (Q,) number of query tokens in the class
    anchor_size: torch.Tensor  # (Q,)
    uncovered: torch.Tensor  # (Q, C) int64
    candidate: torch.Tensor  # (Q, C) bool
    token_class: torch.Tensor | None  # (L,) class of every token (None in analytic-only builds)

    @property
    def num_classes(self) -> int:
        return int(self.class_size.numel())

    @property
    def num_chunks(self) -> int:
        return self.chunks.num_chunks


def build_anchor_structure(
    layout: TokenLayout, chunking: str, *, text_anchor: bool, local_anchor: str, causal: bool,
    per_token: bool = True,
) -> AnchorStructure:
    """Anchors and candidates per query class. ``per_token=False`` skips the (L,) class map."""
    key = ("anchors", chunking, text_anchor, local_anchor, causal, per_token)
    cache = layout._cache
    if key in cache:
        return cache[key]
    ct = layout.chunks(chunking)
    C, S = ct.shot_overlap.shape
    present = ct.shot_overlap > 0  # (C, S): query class (c, s) exists
    class_chunk, class_shot = present.nonzero(as_tuple=True)
    class_size = ct.shot_overlap[class_chunk, class_shot]
    m = ct.sizes  # (C,)

    # Text tokens per shot and in total (text chunks are whole captions, each in one shot).
    text_per_shot = (ct.shot_overlap * ct.is_text[:, None]).sum(0)  # (S,)
    n_text = int(text_per_shot.sum())
    shot_size = ct.shot_overlap.sum(0)  # (S,)

    # Overlap of every chunk with each class's local anchor.
    if local_anchor == "shot":
        local_overlap = ct.shot_overlap[:, class_shot].T  # (Q, C)
        own_local = shot_size[class_shot]
        own_local_text = text_per_shot[class_shot]
    else:
        local_overlap = torch.zeros(len(class_chunk), C, dtype=torch.int64)
        local_overlap[torch.arange(len(class_chunk)), class_chunk] = m[class_chunk]
        own_local = m[class_chunk]
        own_local_text = m[class_chunk] * ct.is_text[class_chunk]
    covered_by_text = (ct.is_text & text_anchor)[None, :]  # a caption chunk is wholly text
    inter = torch.where(covered_by_text, m[None, :], local_overlap)
    uncovered = m[None, :] - inter
    anchor_size = own_local + (n_text - own_local_text if text_anchor else 0)

    candidate = uncovered > 0
    if causal:  # chunk indices are sorted by order, so "earlier" is "smaller index"
        candidate &= torch.arange(C)[None, :] < class_chunk[:, None]

    token_class = None
    if per_token:
        lookup = torch.full((C * S,), -1, dtype=torch.int64)
        lookup[class_chunk * S + class_shot] = torch.arange(len(class_chunk))
        token_class = lookup[ct.chunk_id * S + layout.shot_id]
    out = AnchorStructure(ct, text_anchor, local_anchor, causal, class_chunk, class_shot, class_size,
                          anchor_size, uncovered, candidate, token_class)
    cache[key] = out
    return out


def anchor_mask(layout: TokenLayout, structure: AnchorStructure) -> torch.Tensor:
    """(L, L) bool: True where query i must attend key j. Reference/inspection sizes only."""
    ct = structure.chunks
    is_text = layout.modality == 0
    mask = torch.zeros(layout.num_tokens, layout.num_tokens, dtype=torch.bool)
    if structure.text_anchor:
        mask |= is_text[None, :]
    if structure.local_anchor == "shot":
        mask |= layout.shot_id[:, None] == layout.shot_id[None, :]
    else:
        mask |= ct.chunk_id[:, None] == ct.chunk_id[None, :]
    return mask
