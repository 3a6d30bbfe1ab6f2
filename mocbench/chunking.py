"""Chunking rules (moc-spec §3): how a token stream is cut into chunks.

Every text segment is one chunk. Video segments are cut by a rule:

==============  ====================================================================
``shot``        one chunk per video segment
``frame``       one chunk per frame
``frames:n``    runs of ``n`` consecutive frames inside a shot (last run may be shorter)
``tokens:m``    runs of ``m`` consecutive tokens inside a video segment (last shorter)
``fixed:m``     all video tokens of the stream, in order, cut every ``m`` tokens,
                ignoring frame and shot boundaries (the non-content-aligned baseline)
==============  ====================================================================

Chunks are numbered by *order*: the stream position of their first token. A ``fixed:m``
chunk may straddle a caption, so its tokens need not be contiguous in the stream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    from mocbench.layout import TokenLayout

RULE_FORMS = ("shot", "frame", "frames:n", "tokens:m", "fixed:m")
_RULE_RE = re.compile(r"^(shot|frame|frames|tokens|fixed)(?::(.*))?$")


@dataclass(frozen=True)
class ChunkRule:
    """A parsed chunking rule: ``kind`` in {shot, frame, frames, tokens, fixed} and its size ``n``."""

    kind: str
    n: int = 1

    @classmethod
    def parse(cls, rule: object) -> "ChunkRule":
        if isinstance(rule, ChunkRule):
            return rule
        if not isinstance(rule, str):
            raise TypeError(f"chunking must be a string, one of {RULE_FORMS}; got {rule!r}")
        m = _RULE_RE.match(rule.strip())
        if not m:
            raise ValueError(f"unknown chunking {rule!r}; accepted: {', '.join(RULE_FORMS)} (n, m positive ints)")
        kind, arg = m.group(1), m.group(2)
        if kind in ("shot", "frame"):
            if arg is not None:
                raise ValueError(f"chunking {kind!r} takes no size, got {rule!r}")
            return cls(kind, 1)
        if arg is None or not arg.isdigit() or int(arg) < 1:
            raise ValueError(f"chunking {kind}:N needs a positive integer N, got {rule!r}")
        return cls(kind, int(arg))

    @property
    def content_aligned(self) -> bool:
        return self.kind != "fixed"

    def __str__(self) -> str:
        return self.kind if self.kind in ("shot", "frame") else f"{self.kind}:{self.n}"


@dataclass(frozen=True, eq=False)
class ChunkTable:
    """The chunks of one layout under one rule. All tensors are CPU int64/bool.

    ``chunk_id``      (L,)    chunk of every token
    ``sizes``         (C,)    tokens per chunk
    ``order``         (C,)    stream position of each chunk's first token (strictly increasing)
    ``is_text``       (C,)    True for caption chunks
    ``shot_overlap``  (C, S)  tokens of chunk c that belong to shot s
    ``token_index``   (L,)    token positions sorted by chunk (stable), for gathers
    ``offsets``       (C+1,)  chunk c's tokens are ``token_index[offsets[c]:offsets[c+1]]``
    """

    rule: ChunkRule
    chunk_id: torch.Tensor
    sizes: torch.Tensor
    order: torch.Tensor
    is_text: torch.Tensor
    shot_overlap: torch.Tensor
    token_index: torch.Tensor
    offsets: torch.Tensor

    @property
    def num_chunks(self) -> int:
        return int(self.sizes.numel())

    @property
    def chunk_shot(self) -> torch.Tensor:
        """(C,) the shot of each chunk's first token (its only shot, for content-aligned rules)."""
        return (self.shot_overlap > 0).to(torch.int8).argmax(dim=1)

    @property
    def equal_sized_video(self) -> bool:
        vid = self.sizes[~self.is_text]
        return bool(vid.numel() == 0 or (vid == vid[0]).all())


def _video_group_ids(seg_frames: int, tpf: int, rule: ChunkRule) -> torch.Tensor:
    """Local chunk index of every token of one video segment (content-aligned rules)."""
    n = seg_frames * tpf
    if rule.kind == "shot":
        return torch.zeros(n, dtype=torch.int64)
    if rule.kind == "frame":
        return torch.arange(seg_frames, dtype=torch.int64).repeat_interleave(tpf)
    if rule.kind == "frames":
        return (torch.arange(seg_frames, dtype=torch.int64) // rule.n).repeat_interleave(tpf)
    if rule.kind == "tokens":
        return torch.arange(n, dtype=torch.int64) // rule.n
    raise ValueError(f"not a per-segment chunking: {rule}")  # pragma: no cover


def build_chunk_table(layout: "TokenLayout", rule: ChunkRule) -> ChunkTable:
    """Cut ``layout`` by ``rule``. Vectorised: linear in L, no per-token Python loop."""
    # Give every token a key that is unique per chunk, then number keys by first position.
    keys: list[torch.Tensor] = []
    next_key = 0
    video_tokens_seen = 0
    n_segments = len(layout.segments)
    for s in layout.segments:
        if s.kind == "text":
            keys.append(torch.full((s.length,), next_key, dtype=torch.int64))
            next_key += 1
        elif rule.kind == "fixed":
            # A separate key space (offset by n_segments) shared by all video segments.
            g = (torch.arange(s.length, dtype=torch.int64) + video_tokens_seen) // rule.n
            keys.append(g + n_segments)
            video_tokens_seen += s.length
        else:
            g = _video_group_ids(s.frames, s.tokens_per_frame, rule)
            keys.append(g + next_key)
            next_key += int(g[-1]) + 1
    key = torch.cat(keys)
    uniq, inverse = torch.unique(key, return_inverse=True)
    n_chunks = uniq.numel()
    L = key.numel()
    pos = torch.arange(L, dtype=torch.int64)
    first = torch.full((n_chunks,), L, dtype=torch.int64).scatter_reduce(0, inverse, pos, reduce="amin")
    perm = torch.argsort(first)  # chunk rank by first position
    rank = torch.empty_like(perm)
    rank[perm] = torch.arange(n_chunks, dtype=torch.int64)
    chunk_id = rank[inverse]
    order = first[perm]
    sizes = torch.bincount(chunk_id, minlength=n_chunks)
    is_text = layout.modality[order] == 0
    S = layout.num_shots
    shot_overlap = torch.bincount(chunk_id * S + layout.shot_id, minlength=n_chunks * S).view(n_chunks, S)
    token_index = torch.argsort(chunk_id, stable=True)
    offsets = torch.zeros(n_chunks + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(sizes, 0)
    return ChunkTable(rule, chunk_id, sizes, order, is_text, shot_overlap, token_index, offsets)
