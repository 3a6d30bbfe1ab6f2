"""Sparse VideoGen (SVG; Xi et al. 2025), docs/specs/svg.md.

Two static patterns of a video query (frame ``f``, patch ``p``, ``pos = f * P + p`` inside its shot's video,
``F`` frames in the shot), each plus the caption rule (video_static.py) and, with ``sink``, the shot's first
frame:

* spatial: video keys of the shot with ``|pos_q - pos_k| < width * P`` (a band of about ``width`` frames);
* temporal: video keys of the shot with ``|p_q - p_k| < max(1, floor(width * P / F))`` (the same patches
  across every frame; the same budget as the spatial band).

Per (batch, head) the pattern is chosen online: for ``num_samples`` video queries, evenly spaced over the
stream's video tokens (the ``floor((j + 1/2) V / n)``-th, j < n), the dense softmax over every key of the
stream is computed; the pattern that keeps the larger share of that probability mass (mean over the
samples) wins, spatial on a tie. (SVG compares the patterns' outputs with the dense one; the mass bounds
that error, ``|o - o_pattern| <= 2 (1 - mass) max |v|``, and needs only q and k, as ``prepare`` does.)
The output is exact attention over the chosen pattern: heads split by their choice, each run with its pattern's
group plan (impl ``gather``), or one FlexAttention call with a per-(batch, head) BlockMask and
``mask_mod = where(temporal[b, h], temporal rule, spatial rule)`` (impl ``flex``, :mod:`flex_blocks`).

Legend: B batch, H heads, L tokens, D head_dim, n sampled queries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mocbench.backend import AttentionBackend, Plan
from mocbench.backends import flex_blocks
from mocbench.backends.flex_blocks import FlexBlocks, Rule, flex_workspace_bytes
from mocbench.backends.grouped import GroupPlan, attend_groups
from mocbench.backends.peer_impl import ANY_IMPL, PeerImplMixin, check_impl
from mocbench.backends.video_static import (
    StaticVideoBackend,
    device_table,
    grouped_workspace,
    shot_video,
    token_tables,
)
from mocbench.layout import TokenLayout
from mocbench.registry import register_backend
from mocbench.stats import AttentionStats
from mocbench.workspace import layout_bytes

QUERY_BLOCK = 64  # execution only: queries per group of the static patterns


@dataclass(frozen=True, kw_only=True)
class SVGParams:
    width: float = 2.0  # band of the spatial pattern in frames (the temporal band has the same budget)
    sink: bool = True  # the shot's first frame is attended by every video query (both patterns)
    num_samples: int = 64  # sampled video queries for the online choice, per (batch, head)
    impl: str = "auto"  # gather (CPU) | flex (FlexAttention; CUDA, or eager CPU forward) | auto (by device)

    def __post_init__(self) -> None:
        check_impl(self.impl)
        if not (math.isfinite(self.width) and self.width > 0):
            raise ValueError(f"width must be a finite number of frames > 0, got {self.width}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1 query, got {self.num_samples}")


@dataclass(frozen=True)
class _BandParams:
    width: float
    sink: bool


class _Band(StaticVideoBackend):
    """One of SVG's two static patterns (not registered; built by :class:`SVG`)."""

    def _tables(self, layout: TokenLayout, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Per token: position inside its shot's video, and the temporal band of its shot."""
        def build():
            P = layout.tokens_per_frame
            pos = layout.frame_id * P + layout.patch_id
            band = torch.tensor([max(1, math.floor(self.params.width * P / frames)) for _, _, frames in shot_video(layout)])
            return pos, band[layout.shot_id.clamp(min=0)]

        return device_table(layout, ("svg_tables", self.params.width), device, build)

    def _near(self, layout, device) -> Rule:
        raise NotImplementedError

    def video_rule(self, layout, device):
        near = self._near(layout, device)
        if not self.params.sink:
            return near
        frame = token_tables(layout, device)[2]
        return lambda qi, kj: near(qi, kj) | (frame[kj] == 0)

    def video_groups(self, layout):
        P = layout.tokens_per_frame
        groups = []
        rule = self.video_rule(layout, "cpu")
        for shot, start, frames in shot_video(layout):
            video = torch.arange(start, start + frames * P)
            for q_idx in self._query_blocks(layout, video, frames):
                mask = rule(q_idx[:, None], video[None, :])
                used = mask.any(0)
                k_idx, mask = video[used], mask[:, used]
                groups.append((q_idx, k_idx, None if bool(mask.all()) else mask))
        return groups

    def video_pairs(self, layout):
        P = layout.tokens_per_frame
        rule = self.video_rule(layout, "cpu")
        total = 0
        for _, start, frames in shot_video(layout):
            video = torch.arange(start, start + frames * P)
            for block in video.split(QUERY_BLOCK):
                total += int(rule(block[:, None], video[None, :]).sum())
        return total


class _Spatial(_Band):
    name = "svg_spatial"

    def _near(self, layout, device):
        pos, _ = self._tables(layout, device)
        limit = math.ceil(self.params.width * layout.tokens_per_frame)  # integer |d| < width * P iff |d| < ceil

        return lambda qi, kj: (pos[qi] - pos[kj]).abs() < limit

    def _query_blocks(self, layout, video, frames):
        return list(video.split(QUERY_BLOCK))


class _Temporal(_Band):
    name = "svg_temporal"

    def _near(self, layout, device):
        _, band = self._tables(layout, device)
        p = token_tables(layout, device)[3]
        return lambda qi, kj: (p[qi] - p[kj]).abs() < band[qi]

    def _query_blocks(self, layout, video, frames):
        """Queries of a run of patches across every frame share their keys' patches."""
        P = layout.tokens_per_frame
        per_frame = max(1, QUERY_BLOCK // frames)
        grid = video.view(frames, P)
        return [grid[:, p0:p0 + per_frame].reshape(-1) for p0 in range(0, P, per_frame)]


@dataclass
class SVGPlan(Plan):
    temporal: torch.Tensor | None = None  # (B, H) bool: True where the head chose the temporal pattern
    plans: tuple[GroupPlan, GroupPlan] | None = None  # (spatial, temporal); impl gather
    flex: FlexBlocks | None = None  # impl flex: each head's chosen pattern
    pairs: int = 0
    profile_flops: int = 0


@register_backend("svg", family="svg", caps=ANY_IMPL, params=SVGParams)
class SVG(PeerImplMixin, AttentionBackend):
    """Sparse VideoGen: per head a spatial or a temporal pattern, chosen online from sampled queries."""

    def _bands(self) -> tuple[_Band, _Band]:
        bp = _BandParams(self.params.width, self.params.sink)
        return _Spatial(bp), _Temporal(bp)

    def sampled_queries(self, layout: TokenLayout) -> torch.Tensor:
        """(n,) stream positions of the profiled video queries, evenly spaced over the video tokens."""
        video = torch.nonzero(layout.modality == 1).flatten()
        n = min(self.params.num_samples, video.numel())
        return video[((torch.arange(n, dtype=torch.float64) + 0.5) * video.numel() / n).floor().long()]

    @torch.no_grad()
    def choose(self, q: torch.Tensor, k: torch.Tensor, layout: TokenLayout, scale: float) -> torch.Tensor:
        """(B, H) bool, True = temporal: the pattern that keeps more of the sampled queries' dense softmax
        mass (mean over the samples, in at least float32); spatial on a tie."""
        rows = self.sampled_queries(layout)
        cols = torch.arange(layout.num_tokens)
        dt = torch.promote_types(q.dtype, torch.float32)
        p = torch.softmax((q[:, :, rows.to(q.device)].to(dt) @ k.to(dt).transpose(-1, -2)) * scale, dim=-1)
        mass = [(p * band.predicate(layout, rows[:, None], cols[None, :]).to(q.device)).sum(-1).mean(-1)
                for band in self._bands()]
        return mass[1] > mass[0]

    def _prepare(self, q, k, layout, *, training, generator, scale=None) -> SVGPlan:
        B, H, _, D = q.shape
        plan = SVGPlan(layout, B, H, D, q.device, scale=scale)
        plans = tuple(band.group_plan(layout) for band in self._bands())
        plan.temporal = self.choose(q, k, layout, plan.softmax_scale).cpu()
        n_temporal = int(plan.temporal.sum())
        if self.selected_impl(q.device).flex:
            plan.flex = self.flex_blocks(layout, plan.temporal, q.device)
        else:
            plan.plans = tuple(gp.to(q.device) for gp in plans)
        plan.pairs = (B * H - n_temporal) * plans[0].pairs + n_temporal * plans[1].pairs
        plan.profile_flops = B * H * self._profile_per_head(layout, D)
        return plan

    def flex_blocks(self, layout: TokenLayout, temporal: torch.Tensor, device: torch.device | str,
                    block: int | None = None) -> FlexBlocks:
        """Each head's chosen pattern (``temporal`` (B, H) bool) as one FlexAttention BlockMask, stream order."""
        block = block or flex_blocks.BLOCK
        spatial_band, temporal_band = self._bands()
        B, H = temporal.shape
        counts = torch.where(temporal.reshape(-1, 1, 1).cpu(), temporal_band.block_counts(layout, block),
                             spatial_band.block_counts(layout, block))  # (B*H, QB, KB)
        rule_s, rule_t = spatial_band.rule(layout, device), temporal_band.rule(layout, device)
        chosen = temporal.to(device)

        def rule(qi, kj, b, h):
            return torch.where(chosen[b, h], rule_t(qi, kj), rule_s(qi, kj))

        return flex_blocks.build(counts, rule, layout.num_tokens, block=block, batch=B, heads=H, per_head=True,
                                 device=device, compiled=self.selected_impl(device).compiled)

    def forward(self, q, k, v, plan: SVGPlan) -> torch.Tensor:
        if plan.flex is not None:
            return flex_blocks.run(q, k, v, plan.flex, plan.softmax_scale)
        B, H, L, D = q.shape
        heads = plan.temporal.reshape(-1).to(q.device)
        q3, k3, v3 = (t.reshape(1, B * H, L, D) for t in (q, k, v))
        outs, order = [], []
        for choice, gp in zip((False, True), plan.plans):
            idx = torch.nonzero(heads == choice).flatten()
            if idx.numel():
                outs.append(attend_groups(q3[:, idx], k3[:, idx], v3[:, idx], gp, scale=plan.softmax_scale,
                                          flat=False)[0])
                order.append(idx)
        inverse = torch.empty(B * H, dtype=torch.int64, device=q.device)
        inverse[torch.cat(order)] = torch.arange(B * H, device=q.device)
        return torch.cat(outs, 0).index_select(0, inverse).view(B, H, L, D)

    def _pattern(self, plan: SVGPlan) -> torch.Tensor:
        L = plan.layout.num_tokens
        idx = torch.arange(L)
        masks = [band.predicate(plan.layout, idx[:, None], idx[None, :]) for band in self._bands()]
        return torch.where(plan.temporal[:, :, None, None], masks[1], masks[0]).to(plan.device)

    # ---------------------------------------------------------------- accounting
    def _profile_per_head(self, layout: TokenLayout, head_dim: int) -> int:
        """FLOPs of the online choice per (batch, head): the sampled rows' dense scores."""
        return 2 * head_dim * self.sampled_queries(layout).numel() * layout.num_tokens

    def plan_block_density(self, plan: SVGPlan, block_shape: tuple[int, int]) -> float:
        """Each head's chosen pattern, in stream order (SVG's kernel reorders temporal heads token-major;
        that permutation is not modelled here)."""
        spatial, temporal = (band.block_density_of(plan.layout, block_shape) for band in self._bands())
        n_t = int(plan.temporal.sum())
        return ((plan.temporal.numel() - n_t) * spatial + n_t * temporal) / plan.temporal.numel()

    def plan_stats(self, plan: SVGPlan) -> AttentionStats:
        return AttentionStats(plan.batch, plan.heads, plan.layout.num_tokens, plan.head_dim, plan.pairs,
                              routing_flops=plan.profile_flops)

    def estimate(self, layout, *, head_dim, batch=1, heads=1) -> AttentionStats:
        """Analytic upper bound: every head takes the pattern with more pairs (the choice needs q and k)."""
        bh = batch * heads
        pairs = max(band.estimate(layout, head_dim=head_dim).pairs for band in self._bands())
        return AttentionStats(batch, heads, layout.num_tokens, head_dim, bh * pairs,
                              routing_flops=bh * self._profile_per_head(layout, head_dim))

    def workspace_bytes(self, layout, *, batch, heads, head_dim, dtype, device="cpu", requires_grad=False) -> int:
        """The profiling: the sampled rows' (n, L) dense probabilities (float32 or wider) and one pattern's
        (n, L) mask; then ``gather``: the larger pattern's gathered execution for every head; ``flex``: the two
        patterns' tile counts, the per-head grid and :func:`flex_blocks.flex_workspace_bytes`."""
        n, L = self.sampled_queries(layout).numel(), layout.num_tokens
        biggest = max((band.group_plan(layout) for band in self._bands()), key=lambda gp: gp.gathered_keys)
        profile = n * L + 3 * batch * heads * n * L * 8 + layout_bytes(L)
        if self.selected_impl(device).flex:
            return profile + flex_workspace_bytes(grids=batch * heads + 2, tokens=L, batch=batch, heads=heads,
                                                  head_dim=head_dim, dtype=dtype,
                                                  compiled=self.selected_impl(device).compiled,
                                                  requires_grad=requires_grad, tables=2 * 8 * 8 * L)
        run = grouped_workspace(biggest, batch=batch, heads=heads, head_dim=head_dim, dtype=dtype,
                                requires_grad=requires_grad)
        return run + profile
