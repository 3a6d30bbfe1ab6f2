"""VMoBA: Mixture-of-Block Attention for video diffusion (Wu et al. 2025), docs/specs/vmoba.md.

Each shot's video is cut into blocks by a partition that cycles with the layer index
(``layer % 3``: 0 = temporal ``frames:temporal_chunk``, 1 = spatial ``cubes:F,h,w`` with every frame of
the shot, 2 = spatio-temporal ``cubes:t,h,w``). Per (batch, head, video query i), with the gates
``g_c = q_i . mean(K_c)`` over the blocks c of i's shot:

* ``select="topk"``: i's own block + the ``top_k - 1`` other blocks with the largest gates;
* ``select="threshold"`` (the paper's default, "query_head"): ``g`` is min-max normalised over the shot's
  blocks (``g' = (g - min) / (max - min)``, a spread <= 1e-6 counts as 1); the own block is always kept;
  the other blocks, by decreasing ``g'``, are added until their cumulative ``g'`` reaches
  ``max(threshold - g'_own / sum g', 0) * sum g'`` (at least one; all of them if never, or if ``sum g' = 0``).

A video query attends every caption token, its own block and its selected blocks (exact softmax over
their union). Captions follow the caption rule (video_static.py). Execution: partial attentions
(captions + own block; each selected block) merged by log-sum-exp (:func:`grouped.attend_partials`; impl
``gather``), or FlexAttention with a per-(batch, head) BlockMask counted from the selection and the routed
predicate :meth:`VMoBA.routed_rule` as ``mask_mod`` (impl ``flex``, :mod:`flex_blocks`; stream order).

Legend: B batch, H heads, L tokens, D head_dim, n video queries of a shot, C blocks of a shot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Literal

import torch

from mocbench.backend import AttentionBackend, Plan
from mocbench.backends import flex_blocks
from mocbench.backends.flex_blocks import FlexBlocks, Rule, flex_workspace_bytes
from mocbench.backends.grouped import GroupPlan, attend_partials, build_plan
from mocbench.backends.peer_impl import ANY_IMPL, PeerImplMixin, check_impl
from mocbench.backends.video_static import (
    caption_block_pairs,
    caption_groups,
    caption_keys,
    caption_pairs,
    device_table,
    parse_dims,
    shot_video,
    token_blocks,
    token_tables,
)
from mocbench.blocks import density
from mocbench.layout import TokenLayout
from mocbench.pooling import pool_chunks, pool_dtype
from mocbench.registry import register_backend
from mocbench.stats import AttentionStats
from mocbench.workspace import KERNEL_SCRATCH_BYTES, compute_itemsize, itemsize, layout_bytes

PARTITIONS = ("temporal", "spatial", "spatiotemporal")
NORM_EPS = 1e-6  # a gate spread at most this is treated as 1 (as the published selection does)


@dataclass(frozen=True, kw_only=True)
class VMoBAParams:
    # Transformer layer index: partition = (temporal, spatial, spatiotemporal)[layer % 3]. None: each layer
    # of a model gets its own index (for_layer; the paper's cycle), 0 outside a model; an int pins every layer.
    layer: int | None = None
    temporal_chunk: int = 1  # frames per block (1D partition)
    spatial_chunk: str = "2,5"  # rows, columns per block, every frame of the shot (2D partition)
    st_chunk: str = "1,2,5"  # frames, rows, columns per block (3D partition)
    select: Literal["threshold", "topk"] = "threshold"
    threshold: float = 0.25  # threshold selection: cumulative share of the normalised gates
    top_k: int = 3  # topk selection: blocks per query, its own block included
    impl: str = "auto"  # gather (CPU) | flex (FlexAttention; CUDA, or eager CPU forward) | auto (by device)

    def __post_init__(self) -> None:
        check_impl(self.impl)
        if self.layer is not None and self.layer < 0:
            raise ValueError(f"layer must be >= 0 (the transformer layer index), got {self.layer}")
        if self.temporal_chunk < 1:
            raise ValueError(f"temporal_chunk must be >= 1 frame, got {self.temporal_chunk}")
        parse_dims("spatial_chunk", self.spatial_chunk, "rows,columns")
        parse_dims("st_chunk", self.st_chunk, "frames,rows,columns")
        if not (math.isfinite(self.threshold) and 0 < self.threshold <= 1):
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 (blocks per query, its own included), got {self.top_k}")


@dataclass
class VMoBAPlan(Plan):
    selected: list[torch.Tensor] | None = None  # per shot (B, H, n, C) bool: the blocks each video query attends
    groups: GroupPlan | None = None  # impl gather: the partials
    flex: FlexBlocks | None = None  # impl flex
    routed_pairs: int = 0  # (query, key) pairs of every partial, summed over batch and heads
    routing_flops: int = 0
    pooling_flops: int = 0
    num_chunks: int = 0


def select_blocks(g: torch.Tensor, own: torch.Tensor, p: VMoBAParams) -> torch.Tensor:
    """(B, H, n, C) gates, (n,) own block -> (B, H, n, C) bool: own block + selected others."""
    C = g.shape[-1]
    own_mask = torch.arange(C, device=g.device)[None, :] == own.to(g.device)[:, None]  # (n, C)
    sel = own_mask.expand_as(g).clone()
    if C == 1:
        return sel
    if p.select == "topk":
        k = min(p.top_k - 1, C - 1)
        if k > 0:
            top = g.masked_fill(own_mask, float("-inf")).topk(k, dim=-1).indices
            sel.scatter_(-1, top, True)
        return sel
    spread = g.amax(-1, keepdim=True) - g.amin(-1, keepdim=True)
    spread = torch.where(spread <= NORM_EPS, torch.ones_like(spread), spread)
    gn = (g - g.amin(-1, keepdim=True)) / spread
    total = gn.sum(-1, keepdim=True)
    own_val = (gn * own_mask).sum(-1, keepdim=True)
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    target = (p.threshold - own_val / safe_total).clamp(min=0) * total  # cumulative g' the others must reach
    vals, idx = gn.masked_fill(own_mask, float("-inf")).sort(dim=-1, descending=True, stable=True)
    vals, idx = vals[..., :C - 1], idx[..., :C - 1]  # the own block (-inf) sorts last
    reached = vals.cumsum(-1) >= target
    first = torch.where(reached.any(-1, keepdim=True), reached.int().argmax(-1, keepdim=True),
                        torch.full_like(target, C - 2, dtype=torch.int64))
    first = torch.where(total > 0, first, torch.full_like(first, C - 2))  # all gates equal: every block
    keep = torch.arange(C - 1, device=g.device) <= first
    sel.scatter_(-1, idx, keep)
    return sel


@register_backend("vmoba", family="vmoba", caps=ANY_IMPL, params=VMoBAParams)
class VMoBA(PeerImplMixin, AttentionBackend):
    """VMoBA: MoBA-style block routing per query, 1D/2D/3D partitions cycled by layer."""

    @property
    def partition(self) -> str:
        return PARTITIONS[(self.params.layer or 0) % 3]

    def for_layer(self, index: int) -> AttentionBackend:
        """Layer ``index`` of a model: the partition of ``index % 3`` unless ``layer`` pins one."""
        if self.params.layer is not None:
            return self
        return type(self)(replace(self.params, layer=index))

    def chunking(self, layout: TokenLayout) -> str:
        p = self.params
        if self.partition == "temporal":
            return f"frames:{p.temporal_chunk}"
        if self.partition == "spatial":
            return f"cubes:{max(layout.frames_per_shot)},{p.spatial_chunk}"
        return f"cubes:{p.st_chunk}"

    def check_layout(self, layout: TokenLayout) -> None:
        if self.partition != "temporal" and layout.frame_shape is None:
            raise ValueError(f"vmoba's {self.partition} partition (layer {self.params.layer}) needs the frame "
                             f"geometry: build the layout with frame_shape=(h, w) (h * w = tokens_per_frame = "
                             f"{layout.tokens_per_frame})")

    def _blocks(self, layout: TokenLayout):
        """Per shot: (video token positions (n,), own block of each (n,) local, block members list)."""
        key = ("vmoba_blocks", self.chunking(layout))
        if key not in layout._cache:
            ct = layout.chunks(self.chunking(layout))
            shots = ct.chunk_shot
            out = []
            for s, start, frames in shot_video(layout):
                ids = ((shots == s) & ~ct.is_text).nonzero().flatten()
                members = [ct.token_index[int(ct.offsets[c]):int(ct.offsets[c + 1])] for c in ids.tolist()]
                tokens = torch.arange(start, start + frames * layout.tokens_per_frame)
                local = torch.full((ct.num_chunks,), -1, dtype=torch.int64)
                local[ids] = torch.arange(ids.numel())
                out.append((s, ids, tokens, local[ct.chunk_id[tokens]], members))
            layout._cache[key] = (ct, out)
        return layout._cache[key]

    @torch.no_grad()
    def select(self, q: torch.Tensor, k: torch.Tensor, layout: TokenLayout) -> list[torch.Tensor]:
        """Per shot: the (B, H, n, C) selection of its video queries over its blocks (own included)."""
        ct, shots = self._blocks(layout)
        phi = pool_chunks(k, ct)
        out = []
        for _, ids, tokens, own, _ in shots:
            g = q[:, :, tokens].to(pool_dtype(q.dtype)) @ phi[:, :, ids.to(q.device)].transpose(-1, -2)
            out.append(select_blocks(g, own, self.params))
        return out

    def routed_rule(self, layout: TokenLayout, selected: list[torch.Tensor]) -> Rule:
        """The pattern's predicate ``rule(qi, kj, b, h)`` for the per-shot selections ``selected``: every
        caption key; a caption query its own shot; a video query the keys of its shot's blocks it selected."""
        _, shots = self._blocks(layout)
        B, H = selected[0].shape[:2] if selected else (1, 1)
        device = selected[0].device if selected else torch.device("cpu")
        text, shot, _, _ = token_tables(layout, device)
        widest = max((ids.numel() for _, ids, _, _, _ in shots), default=1)
        table = torch.zeros(B, H, layout.num_tokens, widest, dtype=torch.bool, device=device)
        for (_, ids, tokens, _, _), sel in zip(shots, selected):
            table[:, :, tokens.to(device), :ids.numel()] = sel

        def build_local():  # the local block (inside its shot) of every video token; 0 for captions
            local = torch.zeros(layout.num_tokens, dtype=torch.int64)
            for _, _, tokens, own, _ in shots:
                local[tokens] = own
            return local

        local = device_table(layout, ("vmoba_local_block", self.chunking(layout)), device, build_local)

        def rule(qi, kj, b, h):
            tq, tk = text[qi], text[kj]
            same = shot[qi] == shot[kj]
            return tk | (tq & same) | (~tq & ~tk & same & table[b, h, qi, local[kj]])

        return rule

    def routed_block_pairs(self, layout: TokenLayout, selected: list[torch.Tensor],
                           block_shape: tuple[int, int]) -> torch.Tensor:
        """(B*H, QB, KB) float64: the pattern's pairs per tile in stream order, from the selection (the caption
        rule's tiles + per shot (selections summed per q-block) @ (block tokens per kv-block))."""
        _, shots = self._blocks(layout)
        qb, kb, QB, KB = token_blocks(layout, block_shape)
        dev = selected[0].device if selected else torch.device("cpu")
        counts = caption_block_pairs(layout, block_shape).to(dev)[None]
        for (_, ids, tokens, own, _), sel in zip(shots, selected):
            B, H, n, C = sel.shape
            per_k = torch.zeros(C, KB, dtype=torch.float64).index_put_(
                (own, kb[tokens]), torch.ones((), dtype=torch.float64), accumulate=True)
            per_q = torch.zeros(B * H, QB, C, dtype=torch.float64, device=dev).index_add_(
                1, qb[tokens].to(dev), sel.reshape(B * H, n, C).double())
            counts = counts + per_q @ per_k.to(dev)
        return counts

    def _prepare(self, q, k, layout, *, training, generator, scale=None) -> VMoBAPlan:
        self.check_layout(layout)
        B, H, L, D = q.shape
        ct, shots = self._blocks(layout)
        selected = self.select(q, k, layout)
        routing = sum(2 * B * H * tokens.numel() * ids.numel() * D for _, ids, tokens, _, _ in shots)
        plan = VMoBAPlan(layout, B, H, D, q.device, scale=scale, selected=selected, routing_flops=routing,
                         pooling_flops=B * H * layout.num_video_tokens * D, num_chunks=int((~ct.is_text).sum()))
        if self.selected_impl(q.device).flex:
            counts = self.routed_block_pairs(layout, selected, (flex_blocks.BLOCK, flex_blocks.BLOCK))
            plan.flex = flex_blocks.build(counts, self.routed_rule(layout, selected), L, batch=B, heads=H,
                                          per_head=True, device=q.device,
                                          compiled=self.selected_impl(q.device).compiled)
            plan.routed_pairs = round(float(counts.sum()))
            return plan
        text = caption_keys(layout)
        base_groups = [(qi, ki) for qi, ki, _ in caption_groups(layout)]
        for _, _, _, _, members in shots:
            base_groups += [(m, torch.cat([text, m])) for m in members]  # captions + own block
        groups = []
        for bh in range(B * H):
            groups += [(qi + bh * L, ki + bh * L, None) for qi, ki in base_groups]
        for (_, ids, tokens, own, members), sel in zip(shots, selected):
            sel = sel.cpu() & (torch.arange(ids.numel())[None, :] != own[:, None])  # routed = others only
            bh_i_c = sel.reshape(B * H, tokens.numel(), ids.numel()).nonzero()
            order = torch.argsort(bh_i_c[:, 0] * ids.numel() + bh_i_c[:, 2], stable=True)
            bh_i_c = bh_i_c[order]
            keys, counts = torch.unique_consecutive(bh_i_c[:, 0] * ids.numel() + bh_i_c[:, 2], return_counts=True)
            for key, rows in zip(keys.tolist(), torch.split(bh_i_c[:, 1], counts.tolist())):
                bh, c = divmod(key, ids.numel())
                groups.append((tokens[rows] + bh * L, members[c] + bh * L, None))
        gp = build_plan(groups, B * H * L, disjoint=False)
        plan.groups, plan.routed_pairs = gp.to(q.device), gp.pairs
        return plan

    def forward(self, q, k, v, plan: VMoBAPlan) -> torch.Tensor:
        if plan.flex is not None:
            return flex_blocks.run(q, k, v, plan.flex, plan.softmax_scale)
        return attend_partials(q, k, v, plan.groups, scale=plan.softmax_scale)

    def _pattern(self, plan: VMoBAPlan) -> torch.Tensor:
        L = plan.layout.num_tokens
        idx = torch.arange(L)
        b = torch.arange(plan.batch)[:, None, None, None]
        h = torch.arange(plan.heads)[None, :, None, None]
        rule = self.routed_rule(plan.layout, [s.cpu() for s in plan.selected])
        return rule(idx[:, None], idx[None, :], b, h).to(plan.device)

    # ---------------------------------------------------------------- accounting
    def plan_block_density(self, plan: VMoBAPlan, block_shape: tuple[int, int]) -> float:
        """In stream order (the published kernel gathers routed blocks per query; its own order is the
        partition's, which the 2D/3D rearrangement would give)."""
        return density(self.routed_block_pairs(plan.layout, plan.selected, block_shape).cpu() > 0)

    def plan_stats(self, plan: VMoBAPlan) -> AttentionStats:
        return AttentionStats(plan.batch, plan.heads, plan.layout.num_tokens, plan.head_dim, plan.routed_pairs,
                              routing_flops=plan.routing_flops, pooling_flops=plan.pooling_flops,
                              num_chunks=plan.num_chunks)

    def _others_per_query(self, blocks: int) -> int:
        """Routed blocks besides its own: top_k - 1 (topk) or the one the threshold rule always adds (a
        lower bound of the threshold rule, which depends on q and k)."""
        if self.params.select == "topk":
            return min(self.params.top_k - 1, blocks - 1)
        return min(1, blocks - 1)

    def estimate(self, layout, *, head_dim, batch=1, heads=1) -> AttentionStats:
        """Analytic: caption rule + per video block ``|c| (|c| + K * mean other block)``. Exact for
        ``topk`` when a shot's blocks are equal-sized; for ``threshold`` a lower bound (K = 1)."""
        self.check_layout(layout)
        ct, shots = self._blocks(layout)
        pairs = Fraction(caption_pairs(layout))
        routing = 0
        for _, ids, tokens, _, members in shots:
            C, n = ids.numel(), tokens.numel()
            K = self._others_per_query(C)
            routing += 2 * n * C * head_dim
            for m in members:
                size = m.numel()
                mean_other = Fraction(n - size, C - 1) if C > 1 else Fraction(0)
                pairs += size * (size + K * mean_other)  # caption keys are in caption_pairs
        bh = batch * heads
        return AttentionStats(batch, heads, layout.num_tokens, head_dim, bh * round(pairs),
                              routing_flops=bh * routing, pooling_flops=bh * layout.num_video_tokens * head_dim,
                              num_chunks=int((~ct.is_text).sum()))

    def workspace_bytes(self, layout, *, batch, heads, head_dim, dtype, device="cpu", requires_grad=False) -> int:
        """Worst case (``threshold`` may select every block of the shot): per (batch, head) the scores and
        probabilities of every partial (compute dtype), the gathered query rows (each query once per partial)
        and key rows (each block at most once per partial kind), the partial outputs and their weighted
        copies, one shot's gates, the selections (bool), the group index lists; backward doubles what
        autograd keeps. ``flex``: the selections, the (B, H, L, C) routing table ``mask_mod`` reads, the tile
        counts (float64, per shot a (B*H, QB, C) sum and its float copy of the selection) and
        :func:`flex_blocks.flex_workspace_bytes`."""
        self.check_layout(layout)
        f, e = compute_itemsize(dtype), itemsize(dtype)
        bh, D, L = batch * heads, head_dim, layout.num_tokens
        _, shots = self._blocks(layout)
        selections = sum(bh * tokens.numel() * ids.numel() for _, ids, tokens, _, _ in shots)
        if self.selected_impl(device).flex:
            widest = max(ids.numel() for _, ids, _, _, _ in shots)
            nb = -(-L // flex_blocks.BLOCK)
            counts = 8 * bh * nb * nb * 2 + max(8 * bh * (nb + tokens.numel()) * ids.numel() + 8 * ids.numel() * nb
                                                for _, ids, tokens, _, _ in shots)
            gates = max(3 * bh * tokens.numel() * ids.numel() * f for _, ids, tokens, _, _ in shots)
            return selections + bh * L * widest + counts + gates + layout_bytes(L) + flex_workspace_bytes(
                grids=bh, tokens=L, batch=batch, heads=heads, head_dim=D, dtype=dtype,
                compiled=self.selected_impl(device).compiled, requires_grad=requires_grad, tables=3 * 8 * L)
        n_text = layout.num_text_tokens
        pairs, q_rows = caption_pairs(layout), L
        k_rows = sum(k.numel() for _, k, _ in caption_groups(layout))
        gates = 0
        for _, ids, tokens, _, members in shots:
            C, n = ids.numel(), tokens.numel()
            K = C - 1 if self.params.select == "threshold" else self._others_per_query(C)
            pairs += n * n  # own block + routed blocks: at most the whole shot
            q_rows += n * K
            k_rows += C * n_text + 2 * n  # own-block groups, then each routed block once
            gates = max(gates, 3 * bh * n * C * f)
        kept = bh * (3 * pairs * f + (4 * q_rows + 2 * k_rows) * D * f + 3 * L * D * f)
        if e < f:
            kept += 3 * bh * L * D * f  # the float32 copies of half-precision q, k, v
        if requires_grad:
            kept *= 2
        return kept + gates + selections + 16 * bh * (q_rows + k_rows) + KERNEL_SCRATCH_BYTES + layout_bytes(L)
