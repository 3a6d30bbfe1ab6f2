"""Chunking rules (moc-spec §3): how a token stream is cut into chunks.

Every text segment is one chunk. Video segments are cut by a rule:

==============  ====================================================================
``shot``        one chunk per video segment
``frame``       one chunk per frame
``frames:n``    runs of ``n`` consecutive frames inside a shot (last run may be shorter)
``tokens:m``    runs of ``m`` consecutive tokens inside a video segment (last shorter)
``fixed:m``     all video tokens of the stream, in order, cut every ``m`` tokens,
                ignoring frame and shot boundaries (the non-content-aligned baseline)
``cubes:t,h,w`` 3D tiles inside a shot: ``t`` frames x ``h`` patch rows x ``w`` patch
                columns (partial tiles at the shot's last frames and the frame's last
                rows/columns); needs the layout's ``frame_shape``
==============  ====================================================================

Chunks are numbered by *order*: the stream position of their first token. A ``fixed:m``
chunk may straddle a caption and a ``cubes`` chunk is ``t * h`` runs of ``w`` tokens, so their
tokens need not be contiguous in the stream (``ChunkRule.contiguous`` is False).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


class Stream(Protocol):
    """What chunking reads of a token stream (a :class:`mocbench.layout.TokenLayout` is one): its
    segments in stream order and where each starts, and the frame geometry. Declared here so that this
    module needs nothing from ``layout`` (which imports it)."""

    segments: Sequence
    segment_starts: Sequence[int]
    frame_shape: tuple[int, int] | None
    tokens_per_frame: int
    num_shots: int

RULE_FORMS = ("shot", "frame", "frames:n", "tokens:m", "fixed:m", "cubes:t,h,w")
_RULE_RE = re.compile(r"^(shot|frame|frames|tokens|fixed|cubes)(?::(.*))?$")


@dataclass(frozen=True)
class ChunkRule:
    """A parsed chunking rule: ``kind`` in {shot, frame, frames, tokens, fixed, cubes}, its size ``n``
    and, for ``cubes``, the tile ``dims = (t, h, w)`` (``n = t * h * w``, the size of a full tile)."""

    kind: str
    n: int = 1
    dims: tuple[int, int, int] | None = None

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
        if kind == "cubes":
            parts = (arg or "").split(",")
            if len(parts) != 3 or not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
                raise ValueError(f"chunking cubes:t,h,w needs three positive integers (frames, patch rows, patch "
                                 f"columns of a tile), got {rule!r}")
            t, h, w = (int(p) for p in parts)
            return cls(kind, t * h * w, (t, h, w))
        if arg is None or not arg.isdigit() or int(arg) < 1:
            raise ValueError(f"chunking {kind}:N needs a positive integer N, got {rule!r}")
        return cls(kind, int(arg))

    @property
    def content_aligned(self) -> bool:
        """Chunks never cross a shot boundary or mix text and video (every rule but ``fixed:m``)."""
        return self.kind != "fixed"

    @property
    def contiguous(self) -> bool:
        """Every chunk is one run of consecutive stream positions, chunk ids non-decreasing along the stream."""
        return self.kind not in ("fixed", "cubes")

    def __str__(self) -> str:
        if self.kind == "cubes":
            return "cubes:" + ",".join(map(str, self.dims))
        return self.kind if self.kind in ("shot", "frame") else f"{self.kind}:{self.n}"


@dataclass(frozen=True, eq=False)
class ChunkTable:
    """The chunks of one layout under one rule. All tensors are CPU int64/bool.

    Per chunk (computed from segment arithmetic, O(C + segments)):

    ``sizes``         (C,)    tokens per chunk
    ``order``         (C,)    stream position of each chunk's first token (strictly increasing)
    ``is_text``       (C,)    True for caption chunks

    Dense (built on first access, O(C x S): for runtime paths and inspection, never for analytic
    accounting, which works on the pieces):

    ``shot_overlap``  (C, S)  tokens of chunk c that belong to shot s

    Per token (built on first access, O(L)):

    ``chunk_id``      (L,)    chunk of every token
    ``token_index``   (L,)    token positions sorted by chunk (stable), for gathers
    ``offsets``       (C+1,)  chunk c's tokens are ``token_index[offsets[c]:offsets[c+1]]``

    Internally the stream is a list of *pieces*: maximal runs of consecutive tokens in one
    chunk and one segment (a chunk is one piece unless it is a ``fixed:m`` chunk that straddles
    a caption or a shot boundary, or a ``cubes`` chunk: one piece per (frame, row) it covers).
    """

    rule: ChunkRule
    sizes: torch.Tensor
    order: torch.Tensor
    is_text: torch.Tensor
    piece_chunk: torch.Tensor  # (N,) chunk of each piece, pieces in stream order
    piece_len: torch.Tensor  # (N,)
    piece_shot: torch.Tensor  # (N,) shot of each piece (a piece lies in one segment, so in one shot)
    num_shots: int

    @property
    def num_chunks(self) -> int:
        return int(self.sizes.numel())

    @functools.cached_property
    def chunk_id(self) -> torch.Tensor:
        return torch.repeat_interleave(self.piece_chunk, self.piece_len)

    @functools.cached_property
    def token_index(self) -> torch.Tensor:
        if self.rule.contiguous:  # chunk ids never decrease along the stream
            return torch.arange(int(self.sizes.sum()), dtype=torch.int64)
        return torch.argsort(self.chunk_id, stable=True)

    @functools.cached_property
    def offsets(self) -> torch.Tensor:
        out = torch.zeros(self.num_chunks + 1, dtype=torch.int64)
        out[1:] = torch.cumsum(self.sizes, 0)
        return out

    @functools.cached_property
    def shot_overlap(self) -> torch.Tensor:
        """(C, S) tokens of chunk c that belong to shot s (dense: O(C x S) memory)."""
        C, S = self.num_chunks, self.num_shots
        flat = torch.zeros(C * S, dtype=torch.int64).index_add_(0, self.piece_chunk * S + self.piece_shot,
                                                                self.piece_len)
        return flat.view(C, S)

    @property
    def chunk_shot(self) -> torch.Tensor:
        """(C,) the shot of each chunk's first token (its only shot, for content-aligned rules)."""
        n = self.piece_chunk.numel()
        first = torch.full((self.num_chunks,), n, dtype=torch.int64)
        first = first.scatter_reduce(0, self.piece_chunk, torch.arange(n), reduce="amin")  # pieces in stream order
        return self.piece_shot[first]


def _video_piece_sizes(frames: int, tpf: int, rule: ChunkRule) -> torch.Tensor:
    """Sizes of the consecutive chunks of one video segment (content-aligned rules)."""
    n = frames * tpf
    if rule.kind == "shot":
        return torch.tensor([n], dtype=torch.int64)
    if rule.kind == "frame":
        return torch.full((frames,), tpf, dtype=torch.int64)
    step = rule.n * tpf if rule.kind == "frames" else rule.n
    sizes = torch.full((-(-n // step),), step, dtype=torch.int64)
    sizes[-1] = n - step * (sizes.numel() - 1)
    return sizes


def _cube_pieces(frames: int, frame_shape: tuple[int, int], dims: tuple[int, int, int]):
    """(starts, lengths, cube index) of the pieces of one video segment under ``cubes:t,h,w``, in stream
    order: for every frame and patch row, one run of up to ``w`` columns per column tile. Cubes are
    indexed tile-major (frame tile, row tile, column tile), which is also the order of their first tokens."""
    H, W = frame_shape
    t, h, w = dims
    n_h, n_w = -(-H // h), -(-W // w)
    f = torch.arange(frames).view(-1, 1, 1)
    r = torch.arange(H).view(1, -1, 1)
    cw = torch.arange(n_w).view(1, 1, -1)
    starts = (f * (H * W) + r * W + cw * w).expand(frames, H, n_w).reshape(-1)
    lens = ((cw + 1) * w).clamp(max=W) - cw * w
    lens = lens.expand(frames, H, n_w).reshape(-1)
    cube = ((f // t) * (n_h * n_w) + (r // h) * n_w + cw).expand(frames, H, n_w).reshape(-1)
    return starts, lens, cube


def build_chunk_table(layout: Stream, rule: ChunkRule) -> ChunkTable:
    """Cut ``layout`` by ``rule`` with segment arithmetic (no per-token work)."""
    if rule.kind == "cubes" and layout.frame_shape is None:
        raise ValueError(f"chunking {rule} needs the frame geometry: build the layout with frame_shape=(h, w) "
                         f"(h * w = tokens_per_frame = {layout.tokens_per_frame}); this layout has none")
    starts, lens, keys, shots, texts = [], [], [], [], []
    next_key = 0
    fixed_base = len(layout.segments)  # fixed:m video chunk g gets key fixed_base + g
    video_seen = 0
    for seg, seg_start in zip(layout.segments, layout.segment_starts):
        if seg.kind == "text":
            sizes = torch.tensor([seg.length], dtype=torch.int64)
            k = torch.tensor([next_key], dtype=torch.int64)
            next_key += 1
        elif rule.kind == "fixed":
            v0, v1 = video_seen, video_seen + seg.length
            g = torch.arange(v0 // rule.n, (v1 - 1) // rule.n + 1, dtype=torch.int64)
            lo, hi = (g * rule.n).clamp(min=v0), ((g + 1) * rule.n).clamp(max=v1)
            sizes, k = hi - lo, fixed_base + g
            video_seen = v1
        elif rule.kind == "cubes":
            rel, sizes, cube = _cube_pieces(seg.frames, layout.frame_shape, rule.dims)
            starts.append(seg_start + rel)
            lens.append(sizes)
            keys.append(next_key + cube)
            next_key += int(cube.max()) + 1
            shots.append(torch.full_like(sizes, seg.shot))
            texts.append(torch.zeros(sizes.shape, dtype=torch.bool))
            continue
        else:
            sizes = _video_piece_sizes(seg.frames, seg.tokens_per_frame, rule)
            k = next_key + torch.arange(sizes.numel(), dtype=torch.int64)
            next_key += sizes.numel()
        offs = torch.zeros_like(sizes)
        offs[1:] = torch.cumsum(sizes, 0)[:-1]
        starts.append(seg_start + offs)
        lens.append(sizes)
        keys.append(k)
        shots.append(torch.full_like(sizes, seg.shot))
        texts.append(torch.full(sizes.shape, seg.kind == "text", dtype=torch.bool))
    start, length, key = torch.cat(starts), torch.cat(lens), torch.cat(keys)
    shot, text = torch.cat(shots), torch.cat(texts)

    uniq, piece_key = torch.unique(key, return_inverse=True)
    n_chunks = uniq.numel()
    first = torch.full((n_chunks,), int(start.max()) + 1, dtype=torch.int64)
    first = first.scatter_reduce(0, piece_key, start, reduce="amin")
    perm = torch.argsort(first)  # chunks numbered by first-token position
    rank = torch.empty_like(perm)
    rank[perm] = torch.arange(n_chunks, dtype=torch.int64)
    piece_chunk = rank[piece_key]
    sizes = torch.zeros(n_chunks, dtype=torch.int64).index_add_(0, piece_chunk, length)
    is_text = torch.zeros(n_chunks, dtype=torch.bool)
    is_text[piece_chunk] = text
    return ChunkTable(rule, sizes, first[perm], is_text, piece_chunk, length, shot, layout.num_shots)
