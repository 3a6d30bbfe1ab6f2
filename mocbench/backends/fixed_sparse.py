"""Fixed sparse baselines (moc-spec §8): patterns decided by the layout alone, no routing.

* ``shot_local``    text anchor + own shot (MoC with ``top_k=0``)
* ``frame_window``  text anchor + frames within +-``window`` of the query's frame, same shot.
                    A caption query has no frame: it attends the text anchor, or only its
                    own caption when the text anchor is off.
* ``strided``       text anchor + own chunk + every ``stride``-th chunk of the stream
                    (chunks ``0, stride, 2*stride, ...`` under ``chunking``)

Their pair counts and block densities (moc-spec §10) are exact closed forms over the layout (no L x L
tensor), so measured and analytic statistics coincide; the tests check both against the materialised mask. Their
``forward`` is **masked dense attention**: SDPA with the ``(L, L)`` boolean pattern, the exact
reference at small and medium sizes. Their timings measure that, not a sparse kernel; bench configs
label them "(masked dense)" where speed is compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from mocbench.anchors import anchor_blocks, anchor_mask, query_classes
from mocbench.backend import AttentionBackend, Plan
from mocbench.blocks import banded_density, grid_shape, key_columns, presence, related_blocks
from mocbench.chunking import ChunkRule
from mocbench.layout import TokenLayout
from mocbench.registry import register_backend
from mocbench.stats import AttentionStats
from mocbench.workspace import layout_bytes, sdpa_bytes


class StaticPatternBackend(AttentionBackend):
    """A pattern that depends only on the layout: ``(L, L)`` mask + exact per-(b, h) pair count."""

    def key_mask(self, layout: TokenLayout) -> torch.Tensor:
        raise NotImplementedError

    def pairs_per_head(self, layout: TokenLayout) -> int:
        raise NotImplementedError

    def _mask_cached(self, layout: TokenLayout) -> torch.Tensor:
        key = ("static_mask", self.name, self.params)
        if key not in layout._cache:
            layout._cache[key] = self.key_mask(layout)
        return layout._cache[key]

    def forward(self, q, k, v, plan: Plan) -> torch.Tensor:
        mask = self._mask_cached(plan.layout).to(q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=plan.scale)

    def _pattern(self, plan: Plan) -> torch.Tensor:
        mask = self._mask_cached(plan.layout).to(plan.device)
        return mask.expand(plan.batch, plan.heads, -1, -1)

    def plan_stats(self, plan: Plan) -> AttentionStats:
        return self.estimate(plan.layout, head_dim=plan.head_dim, batch=plan.batch, heads=plan.heads)

    def block_grid(self, layout: TokenLayout, block_shape: tuple[int, int],
                   rows: tuple[int, int] | None = None) -> torch.Tensor:
        """(QB, KB) bool: the ``bq x bk`` blocks holding an attended pair, from runs (no L x L tensor);
        ``rows=(q0, q1)``: only that band of query blocks."""
        raise NotImplementedError

    def plan_block_density(self, plan: Plan, block_shape: tuple[int, int]) -> float:
        return self.estimate_block_density(plan.layout, block_shape)

    def estimate_block_density(self, layout: TokenLayout, block_shape: tuple[int, int]) -> float:
        """Exact: the pattern depends on the layout alone (moc-spec §10); built band by band."""
        return banded_density(lambda q0, q1: self.block_grid(layout, block_shape, rows=(q0, q1)),
                              grid_shape(layout.num_tokens, block_shape))

    def estimate(self, layout, *, head_dim, batch=1, heads=1) -> AttentionStats:
        L = layout.num_tokens
        return AttentionStats(batch, heads, L, head_dim, self.pairs_per_head(layout) * batch * heads,
                              num_chunks=self._num_chunks(layout))

    def _num_chunks(self, layout: TokenLayout) -> int:
        return 0

    # Peak bytes of ``key_mask`` per L^2 (the result plus its temporaries); subclasses set it.
    mask_build_bytes_per_pair: ClassVar[int] = 2

    def workspace_bytes(self, layout, *, batch, heads, head_dim, dtype, device="cpu", requires_grad=False) -> int:
        """The (L, L) bool mask (cached on the layout, built once with ``key_mask``'s temporaries; on CUDA
        copied to the device every call) and SDPA with that mask (a float copy of it in the dtype)."""
        L = layout.num_tokens
        pairs = L * L
        attend = pairs + sdpa_bytes(batch, heads, L, head_dim, dtype, device, requires_grad=requires_grad,
                                    mask_elements=pairs)
        if torch.device(device).type == "cuda":  # key_mask runs on the host
            return attend + layout_bytes(L)
        return max(self.mask_build_bytes_per_pair * pairs, attend) + layout_bytes(L)


@dataclass(frozen=True, kw_only=True)
class ShotLocalParams:
    text_anchor: bool = True


@register_backend("shot_local", family="fixed_sparse", params=ShotLocalParams)
class ShotLocal(StaticPatternBackend):
    """Text anchor + every token of the query's own shot (MoC with top_k=0)."""

    mask_build_bytes_per_pair = 2  # the mask + the shot-equality temporary

    def _classes(self, layout):
        return query_classes(layout, "shot", text_anchor=self.params.text_anchor, local_anchor="shot")

    def key_mask(self, layout):
        return anchor_mask(layout, self._classes(layout))

    def pairs_per_head(self, layout):
        s = self._classes(layout)
        return int((s.class_size * s.anchor_size).sum())

    def block_grid(self, layout, block_shape, rows=None):
        return anchor_blocks(layout, self._classes(layout), block_shape, rows=rows)


@dataclass(frozen=True, kw_only=True)
class FrameWindowParams:
    window: int = 1
    text_anchor: bool = True

    def __post_init__(self) -> None:
        if self.window < 0:
            raise ValueError(f"window must be >= 0 frames, got {self.window}")


@register_backend("frame_window", family="fixed_sparse", params=FrameWindowParams)
class FrameWindow(StaticPatternBackend):
    """Text anchor + frames within +-window of the query's frame in the same shot."""

    mask_build_bytes_per_pair = 6  # the int32 frame difference, the window test, the shot equality, a spare

    def key_mask(self, layout):
        w, ta = self.params.window, self.params.text_anchor
        is_text = layout.is_text
        shot, frame, seg = layout.shot_id, layout.frame_id.to(torch.int32), layout.segment_id
        video_q, video_k = ~is_text[:, None], ~is_text[None, :]
        diff = frame[:, None] - frame[None, :]  # (L, L) int32, made absolute in place: 4 bytes a pair, not 16
        near = diff.abs_() <= w
        del diff
        near &= shot[:, None] == shot[None, :]
        mask = video_q & video_k & near
        own_caption = is_text[:, None] & (seg[:, None] == seg[None, :])
        mask |= own_caption
        if ta:
            mask |= is_text[None, :]
        return mask

    def block_grid(self, layout, block_shape, rows=None):
        """Frames (and captions) as groups: video frame a relates to frame b of its shot within the window
        (a sparse list of related pairs, never frames x frames), a caption to itself, and under the text
        anchor every query to every key block holding a caption token."""
        ct = layout.chunks("frame")
        first = ct.order
        text, shot, frame = ct.is_text, layout.shot_id[first], layout.frame_id[first]
        C, w = ct.num_chunks, self.params.window
        video = torch.nonzero(~text).flatten()
        pairs = [torch.stack([torch.nonzero(text).flatten()] * 2, dim=1)]
        for d in range(-w, w + 1):  # frame chunks of a shot are consecutive in chunk order
            b = video + d
            ok = (b >= 0) & (b < C)
            a, b = video[ok], b[ok]
            keep = ~text[b] & (shot[a] == shot[b]) & ((frame[a] - frame[b]).abs() <= w)
            pairs.append(torch.stack([a[keep], b[keep]], dim=1))
        grid = _runs_grid(layout, ct, block_shape, torch.cat(pairs), rows=rows)
        if self.params.text_anchor:
            start, stop = _run_bounds(ct)
            caption = text[ct.piece_chunk]
            grid |= key_columns(start[caption], stop[caption], block_shape[1], grid.shape[1])[None, :]
        return grid

    def pairs_per_head(self, layout):
        w, ta = self.params.window, self.params.text_anchor
        n_text = layout.num_text_tokens
        P = layout.tokens_per_frame
        total = 0
        for s in layout.segments:
            if s.kind == "text":
                total += s.tokens * (n_text if ta else s.tokens)
            else:
                f = torch.arange(s.frames)
                frames_seen = (f + w).clamp(max=s.frames - 1) - (f - w).clamp(min=0) + 1
                total += P * int((P * frames_seen + (n_text if ta else 0)).sum())
        return total


@dataclass(frozen=True, kw_only=True)
class StridedParams:
    stride: int = 4
    chunking: str = "frame"
    text_anchor: bool = True

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        ChunkRule.parse(self.chunking)


@register_backend("strided", family="fixed_sparse", params=StridedParams)
class Strided(StaticPatternBackend):
    """Text anchor + own chunk + every stride-th chunk of the stream (a static long-range pattern)."""

    mask_build_bytes_per_pair = 3  # chunk equality, the mask, a spare

    def _num_chunks(self, layout):
        return layout.chunks(self.params.chunking).num_chunks

    def key_mask(self, layout):
        ct = layout.chunks(self.params.chunking)
        cid = ct.chunk_id
        mask = (cid[:, None] == cid[None, :]) | (cid % self.params.stride == 0)[None, :]
        if self.params.text_anchor:
            mask |= layout.is_text[None, :]
        return mask

    def block_grid(self, layout, block_shape, rows=None):
        """Own chunk, plus every key block holding a strided chunk's (or, with the text anchor, a caption's) token."""
        ct = layout.chunks(self.params.chunking)
        grid = _runs_grid(layout, ct, block_shape, None, rows=rows)
        start, stop = _run_bounds(ct)
        everyone = ct.piece_chunk % self.params.stride == 0
        if self.params.text_anchor:
            everyone |= ct.is_text[ct.piece_chunk]
        KB = grid.shape[1]
        return grid | key_columns(start[everyone], stop[everyone], block_shape[1], KB)[None, :]

    def pairs_per_head(self, layout):
        ct = layout.chunks(self.params.chunking)
        ta = self.params.text_anchor
        C = ct.num_chunks
        strided = torch.arange(C) % self.params.stride == 0
        # keys a chunk contributes beyond the text anchor
        extra = torch.where(ct.is_text & ta, 0, ct.sizes)
        base = (layout.num_text_tokens if ta else 0) + int(extra[strided].sum())
        per_class = base + torch.where(strided, 0, extra)  # own chunk, unless already strided
        return int((ct.sizes * per_class).sum())


def _run_bounds(ct) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, stop) of every run of the chunk table (runs in stream order)."""
    stop = torch.cumsum(ct.piece_len, 0)
    return stop - ct.piece_len, stop


def _runs_grid(layout: TokenLayout, ct, block_shape: tuple[int, int], relation: torch.Tensor | None,
               rows: tuple[int, int] | None = None) -> torch.Tensor:
    """(QB, KB) bool: query and key blocks meeting chunks that ``relation`` relates (a (C, C) bool matrix or
    (n, 2) related chunk pairs; None: the same chunk); ``rows``: a band of query blocks."""
    start, stop = _run_bounds(ct)
    return related_blocks(presence(start, stop, ct.piece_chunk, block_shape[0]),
                          presence(start, stop, ct.piece_chunk, block_shape[1]),
                          grid_shape(layout.num_tokens, block_shape), relation, rows=rows)
