"""Video Sparse Attention (VSA; Zhang et al. 2025, FastVideo), docs/specs/vsa.md.

Video tokens are grouped into cubes (``cubes:t,h,w``, partial cubes at the edges). Per (batch, head):

* coarse stage: mean-pooled ``q_c, k_c, v_c`` of every video cube of the stream;
  ``S = q_c k_c'^T * scale`` over all cube pairs; coarse output ``O_c = softmax(S_c) V``;
* selection: ``Omega(c)`` = the ``top_k`` cubes with the largest ``S_c.`` (any shot: VSA's rule reaches
  beyond the query's shot);
* fine stage: a video query of cube c attends, exactly, every caption token and every token of the cubes
  in ``Omega(c)``;
* output: ``o_i = fine_i + coarse_gate * O_c(i)`` (the method adds the coarse output; its learned gate
  is a constant here because a backend sees only q, k, v).

The fine stage runs as gathered groups per (batch, head, cube) (impl ``gather``) or as FlexAttention in the
cube-major order of VSA's kernel, with a per-(batch, head) BlockMask counted from the selection and the fine
predicate :meth:`VSA.fine_rule` as ``mask_mod`` (impl ``flex``, :mod:`flex_blocks`).

Caption queries follow the caption rule (video_static.py) and get no coarse term. ``attention_pattern``
is the fine stage's pattern; :meth:`VSA.float64_reference` is the exact function (fine + coarse).

Legend: B batch, H heads, L tokens, D head_dim, C video cubes of the stream, K = min(top_k, C).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

from mocbench.backend import AttentionBackend, Plan
from mocbench.backends import flex_blocks
from mocbench.backends.flex_blocks import FlexBlocks, Rule, flex_workspace_bytes
from mocbench.backends.grouped import GroupPlan, attend_groups, build_plan
from mocbench.backends.peer_impl import ANY_IMPL, PeerImplMixin, check_impl
from mocbench.backends.video_static import (
    caption_block_pairs,
    caption_groups,
    caption_keys,
    caption_pairs,
    device_table,
    parse_dims,
    token_blocks,
    token_tables,
)
from mocbench.blocks import density
from mocbench.layout import TokenLayout
from mocbench.pooling import pool_chunks
from mocbench.registry import register_backend
from mocbench.stats import AttentionStats
from mocbench.workspace import KERNEL_SCRATCH_BYTES, compute_itemsize, itemsize, layout_bytes


@dataclass(frozen=True, kw_only=True)
class VSAParams:
    cube: str = "4,4,4"  # frames, rows, columns of a cube (VSA's 64-token cube)
    top_k: int = 32  # cubes each query cube attends in the fine stage
    coarse_gate: float = 1.0  # weight of the coarse output (the method's gate, fixed)
    impl: str = "auto"  # fine stage: gather (CPU) | flex (FlexAttention; CUDA, or eager CPU forward) | auto

    def __post_init__(self) -> None:
        check_impl(self.impl)
        parse_dims("cube", self.cube, "frames,rows,columns")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 cube, got {self.top_k}")
        if not (math.isfinite(self.coarse_gate) and self.coarse_gate >= 0):
            raise ValueError(f"coarse_gate must be a finite float >= 0, got {self.coarse_gate}")


@dataclass
class VSAPlan(Plan):
    selected: torch.Tensor | None = None  # (B, H, C, C) bool: cube c' in Omega(c)
    groups: GroupPlan | None = None  # impl gather: fine stage, flat rows, disjoint
    flex: FlexBlocks | None = None  # impl flex: fine stage in cube-major order
    fine_pairs: int = 0
    num_cubes: int = 0


def cube_scores(q: torch.Tensor, k: torch.Tensor, ct, cube_ids: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, H, C, C) coarse scores of the video cubes ``cube_ids`` (pooled in at least float32)."""
    qc = pool_chunks(q, ct)[:, :, cube_ids]
    kc = pool_chunks(k, ct)[:, :, cube_ids]
    return (qc @ kc.transpose(-1, -2)) * scale


@register_backend("vsa", family="vsa", caps=ANY_IMPL, params=VSAParams)
class VSA(PeerImplMixin, AttentionBackend):
    """Video Sparse Attention: pooled coarse attention picks top-k cubes; fine attention inside them."""

    @property
    def chunking(self) -> str:
        return "cubes:" + self.params.cube

    def check_layout(self, layout: TokenLayout) -> None:
        if layout.frame_shape is None:
            raise ValueError(f"vsa needs the frame geometry: build the layout with frame_shape=(h, w) "
                             f"(h * w = tokens_per_frame = {layout.tokens_per_frame})")

    def _cubes(self, layout: TokenLayout):
        """(chunk table, video cube ids (C,), members per cube, cube of every token (L,), C for captions)."""
        key = ("vsa_cubes", self.params.cube)
        if key not in layout._cache:
            self.check_layout(layout)
            ct = layout.chunks(self.chunking)
            ids = (~ct.is_text).nonzero().flatten()
            members = [ct.token_index[int(ct.offsets[c]):int(ct.offsets[c + 1])] for c in ids.tolist()]
            local = torch.full((ct.num_chunks,), ids.numel(), dtype=torch.int64)
            local[ids] = torch.arange(ids.numel())
            layout._cache[key] = (ct, ids, members, local[ct.chunk_id])
        return layout._cache[key]

    @torch.no_grad()
    def select(self, q: torch.Tensor, k: torch.Tensor, layout: TokenLayout, scale: float) -> torch.Tensor:
        """(B, H, C, K) the cubes each query cube attends (largest coarse scores)."""
        ct, ids, _, _ = self._cubes(layout)
        s = cube_scores(q, k, ct, ids.to(q.device), scale)
        return s.topk(min(self.params.top_k, ids.numel()), dim=-1).indices

    def kernel_order(self, layout: TokenLayout) -> torch.Tensor:
        """Cube-major, as VSA's kernel runs: each shot's caption, then its cubes one after another."""
        return self._cubes(layout)[0].token_index

    def fine_rule(self, layout: TokenLayout, selected: torch.Tensor) -> Rule:
        """The fine stage's predicate ``rule(qi, kj, b, h)`` for the (B, H, C, C) selection ``selected``: every
        caption key; a caption query its own shot; a video query the keys of its cube's selected cubes."""
        B, H, C, _ = selected.shape
        device = selected.device
        text, shot, _, _ = token_tables(layout, device)
        cube = device_table(layout, ("vsa_cube_of", self.params.cube), device, lambda: self._cubes(layout)[3])
        table = torch.zeros(B, H, C + 1, C + 1, dtype=torch.bool, device=device)  # row / column C: captions
        table[:, :, :C, :C] = selected

        def rule(qi, kj, b, h):
            tq, tk = text[qi], text[kj]
            return tk | (tq & (shot[qi] == shot[kj])) | (~tq & ~tk & table[b, h, cube[qi], cube[kj]])

        return rule

    def fine_block_pairs(self, layout: TokenLayout, selected: torch.Tensor, block_shape: tuple[int, int]) -> torch.Tensor:
        """(B*H, QB, KB) float64: the fine stage's pairs per tile in cube-major order, from the selection (the
        caption rule's tiles + (cube tokens per q-block) @ selected @ (cube tokens per kv-block))."""
        ct, _, _, cube_of = self._cubes(layout)
        B, H, C, _ = selected.shape
        qb, kb, QB, KB = token_blocks(layout, block_shape, ct.token_index)
        per_q = torch.zeros(QB, C + 1, dtype=torch.float64).index_put_((qb, cube_of), torch.ones((), dtype=torch.float64), accumulate=True)
        per_k = torch.zeros(C + 1, KB, dtype=torch.float64).index_put_((cube_of, kb), torch.ones((), dtype=torch.float64), accumulate=True)
        dev = selected.device
        video = per_q[:, :C].to(dev) @ selected.reshape(B * H, C, C).double() @ per_k[:C].to(dev)
        return caption_block_pairs(layout, block_shape, ct.token_index).to(dev) + video

    def _prepare(self, q, k, layout, *, training, generator, scale=None) -> VSAPlan:
        B, H, L, D = q.shape
        plan = VSAPlan(layout, B, H, D, q.device, scale=scale)
        _, ids, members, _ = self._cubes(layout)
        C = ids.numel()
        chosen = self.select(q, k, layout, plan.softmax_scale)  # (B, H, C, K)
        plan.selected = torch.zeros(B, H, C, C, dtype=torch.bool, device=q.device).scatter_(-1, chosen, True)
        plan.num_cubes = C
        if self.selected_impl(q.device).flex:
            counts = self.fine_block_pairs(layout, plan.selected, (flex_blocks.BLOCK, flex_blocks.BLOCK))
            plan.flex = flex_blocks.build(counts, self.fine_rule(layout, plan.selected), L, order=self.kernel_order(layout),
                                          batch=B, heads=H, per_head=True, device=q.device,
                                          compiled=self.selected_impl(q.device).compiled)
            plan.fine_pairs = round(float(counts.sum()))
            return plan
        sel = chosen.cpu().view(B * H, C, -1)
        text = caption_keys(layout)
        groups = []
        for bh in range(B * H):
            off = bh * L
            groups += [(qi + off, ki + off, None) for qi, ki, _ in caption_groups(layout)]
            for c, picked in enumerate(sel[bh].tolist()):
                keys = torch.cat([text] + [members[j] for j in sorted(picked)])
                groups.append((members[c] + off, keys + off, None))
        gp = build_plan(groups, B * H * L, disjoint=True)
        plan.groups, plan.fine_pairs = gp.to(q.device), gp.pairs
        return plan

    def forward(self, q, k, v, plan: VSAPlan) -> torch.Tensor:
        if plan.flex is not None:
            fine = flex_blocks.run(q, k, v, plan.flex, plan.softmax_scale)
        else:
            fine = attend_groups(q, k, v, plan.groups, scale=plan.softmax_scale, flat=True)
        if self.params.coarse_gate == 0:
            return fine
        return fine + self.params.coarse_gate * self._coarse(q, k, v, plan.layout, plan.softmax_scale).to(q.dtype)

    def _coarse(self, q, k, v, layout: TokenLayout, scale: float) -> torch.Tensor:
        """(B, H, L, D) the coarse output of every token's cube (zero for captions), in the pooling dtype."""
        ct, ids, _, cube_of = self._cubes(layout)
        idx = ids.to(q.device)
        s = cube_scores(q, k, ct, idx, scale)
        o_c = torch.softmax(s, dim=-1) @ pool_chunks(v, ct)[:, :, idx]  # (B, H, C, D)
        o_c = torch.cat([o_c, o_c.new_zeros(o_c.shape[0], o_c.shape[1], 1, o_c.shape[3])], 2)  # row C: captions
        return o_c[:, :, cube_of.to(q.device)]

    def float64_reference(self, q, k, v, layout: TokenLayout, *, scale: float | None = None) -> torch.Tensor:
        """The exact function in float64 (differentiable): masked softmax over the fine pattern +
        coarse_gate * coarse output. For validation; materialises (B, H, L, L)."""
        q, k, v = (t.to(torch.float64) for t in (q, k, v))
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        pattern = self.attention_pattern(q.detach(), k.detach(), layout)
        s = (q @ k.transpose(-1, -2) * scale).masked_fill(~pattern, float("-inf"))
        return torch.softmax(s, -1) @ v + self.params.coarse_gate * self._coarse(q, k, v, layout, scale)

    def _pattern(self, plan: VSAPlan) -> torch.Tensor:
        L = plan.layout.num_tokens
        idx = torch.arange(L)
        b = torch.arange(plan.batch)[:, None, None, None]
        h = torch.arange(plan.heads)[None, :, None, None]
        return self.fine_rule(plan.layout, plan.selected.cpu())(idx[:, None], idx[None, :], b, h).to(plan.device)

    # ---------------------------------------------------------------- accounting
    def _routing(self, layout: TokenLayout, head_dim: int, bh: int) -> tuple[int, int]:
        """(coarse stage FLOPs: scores + coarse attention, pooling FLOPs of q, k, v)."""
        C = self._cubes(layout)[1].numel()
        return bh * 4 * C * C * head_dim, bh * 3 * layout.num_video_tokens * head_dim

    def plan_block_density(self, plan: VSAPlan, block_shape: tuple[int, int]) -> float:
        """The fine stage's blocks in the cube-major order VSA's kernel runs in (captions in place)."""
        return density(self.fine_block_pairs(plan.layout, plan.selected, block_shape).cpu() > 0)

    def plan_stats(self, plan: VSAPlan) -> AttentionStats:
        routing, pooling = self._routing(plan.layout, plan.head_dim, plan.batch * plan.heads)
        return AttentionStats(plan.batch, plan.heads, plan.layout.num_tokens, plan.head_dim, plan.fine_pairs,
                              routing_flops=routing, pooling_flops=pooling, num_chunks=plan.num_cubes)

    def estimate(self, layout, *, head_dim, batch=1, heads=1) -> AttentionStats:
        """Analytic: caption rule + every video query attends ``K`` cubes of mean size; exact when every cube
        is full (the frame and shot sizes are multiples of the cube)."""
        _, ids, _, _ = self._cubes(layout)
        C, V = ids.numel(), layout.num_video_tokens
        K = min(self.params.top_k, C)
        pairs = Fraction(caption_pairs(layout)) + V * K * Fraction(V, C)
        bh = batch * heads
        routing, pooling = self._routing(layout, head_dim, bh)
        return AttentionStats(batch, heads, layout.num_tokens, head_dim, bh * round(pairs), routing_flops=routing,
                              pooling_flops=pooling, num_chunks=C)

    def workspace_bytes(self, layout, *, batch, heads, head_dim, dtype, device="cpu", requires_grad=False) -> int:
        """Coarse stage: pooled q, k, v and the (C, C) scores and weights; the (B, H, C, C) selection (bool, and
        its float64 copy for the tile counts). Fine stage, ``gather``: gathered q rows, key and value rows
        (captions + K largest cubes per cube), bucket outputs and their re-ordered copy, group index lists;
        ``flex``: the (C+1)^2 selection table and :func:`flex_blocks.flex_workspace_bytes` (its tile counts in
        float64 and the (QB, C) / (C, KB) cube incidences). Backward doubles what autograd keeps."""
        self.check_layout(layout)
        _, ids, members, _ = self._cubes(layout)
        C, L, D = ids.numel(), layout.num_tokens, head_dim
        e, f, bh = itemsize(dtype), compute_itemsize(dtype), batch * heads
        coarse = bh * (3 * C * D + 3 * C * C + 2 * L * D) * f
        selection = bh * C * C * (1 + 8)
        if self.selected_impl(device).flex:
            nb = -(-L // flex_blocks.BLOCK)
            counts = 8 * (bh * nb * nb + bh * nb * C + 2 * nb * C)
            kept = coarse * (2 if requires_grad else 1) + 3 * bh * L * D * f
            return kept + selection + bh * (C + 1) ** 2 + counts + layout_bytes(L) + flex_workspace_bytes(
                grids=bh, tokens=L, batch=batch, heads=heads, head_dim=D, dtype=dtype,
                compiled=self.selected_impl(device).compiled, requires_grad=requires_grad, tables=3 * 8 * L)
        K = min(self.params.top_k, C)
        biggest = sorted((m.numel() for m in members), reverse=True)[:K]
        n_text = layout.num_text_tokens
        keys = sum(k.numel() for _, k, _ in caption_groups(layout)) + C * (n_text + sum(biggest))
        fine = bh * (3 * L + 2 * keys) * D * e + bh * L * 4
        kept = fine + coarse
        if requires_grad:
            kept *= 2
        return kept + selection + 8 * bh * (keys + 2 * L) + KERNEL_SCRATCH_BYTES + layout_bytes(L)
