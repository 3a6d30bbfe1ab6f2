"""The shared frame of the peer video families (docs/specs/README.md): the caption rule, static patterns
as gathered groups, and their accounting.

Caption rule (every peer family, multi-shot streams): every query attends every caption token of the
stream (the text anchor, as in MoC); a caption query also attends every video token of its own shot;
a video query attends video keys only as its family's rule says (within its own shot, unless the
family's rule reaches further). A static family subclasses :class:`StaticVideoBackend` and gives

* ``video_rule(layout, device)``: a pure predicate ``rule(qi, kj) -> bool`` over token-index tensors on
  ``device`` (broadcast), whether video query ``qi`` attends video key ``kj`` of the *same shot* (only read
  where both are video, same shot); written with tensor indexing only, so the same function builds the
  pattern, the groups, and FlexAttention's ``mask_mod`` (vmapped eagerly, traced when compiled);
* ``video_groups(layout)``: disjoint groups ``(q_idx, k_idx, mask | None)`` covering every video query,
  ``k_idx`` the group's video keys (the base adds every caption key), ``mask`` which of them each query
  attends (None: all of them);
* ``video_pairs(layout)``: the closed-form number of (video query, video key) pairs, for ``estimate``.

The base builds the (cached) group plan and runs it with :func:`grouped.attend_groups` (impl ``gather``), or
builds a FlexAttention BlockMask from the plan's tile counts with the predicate as ``mask_mod`` (impl ``flex``,
:mod:`flex_blocks`, in :meth:`StaticVideoBackend.kernel_order`); it inspects the pattern with the same predicate,
and counts pairs measured (from the plan's groups) and analytically.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mocbench.backend import AttentionBackend, Plan
from mocbench.backends import flex_blocks
from mocbench.backends.flex_blocks import FlexBlocks, Rule, flex_workspace_bytes
from mocbench.backends.grouped import GroupPlan, attend_groups, build_plan, plan_block_grid, plan_block_pairs
from mocbench.backends.peer_impl import PeerImplMixin
from mocbench.blocks import density
from mocbench.layout import TokenLayout
from mocbench.stats import AttentionStats
from mocbench.workspace import KERNEL_SCRATCH_BYTES, itemsize, layout_bytes


def parse_dims(name: str, value: object, hint: str) -> tuple[int, ...]:
    """``"6,8,8"`` -> (6, 8, 8): as many positive ints as ``hint`` names (``"frames,rows,columns"``),
    separated by commas; the error names the parameter, the value and the accepted form."""
    count = len(hint.split(","))
    if isinstance(value, str):
        parts = value.split(",")
        if len(parts) == count and all(p.strip().isdigit() and int(p) >= 1 for p in parts):
            return tuple(int(p) for p in parts)
    raise ValueError(f"{name} must be {count} positive ints '{hint}' separated by commas "
                     f"(e.g. {','.join(['2'] * count)!r}), got {value!r}")


def device_table(layout: TokenLayout, key: tuple, device: torch.device | str, build):
    """``build()`` (a tensor or a tuple of tensors, computed on the CPU once per layout) on ``device``, cached on
    the layout under ``key``: the tables a predicate reads must live where its indices do."""
    dev = torch.device(device)
    if (key, "cpu") not in layout._cache:
        layout._cache[(key, "cpu")] = build()
    if (key, str(dev)) not in layout._cache:
        value = layout._cache[(key, "cpu")]
        layout._cache[(key, str(dev))] = tuple(t.to(dev) for t in value) if isinstance(value, tuple) else value.to(dev)
    return layout._cache[(key, str(dev))]


def token_tables(layout: TokenLayout, device: torch.device | str) -> tuple[torch.Tensor, ...]:
    """(is_text, shot_id, frame_id, patch_id) of every token, on ``device``."""
    return device_table(layout, ("peer_token_tables",), device,
                        lambda: (layout.is_text, layout.shot_id, layout.frame_id, layout.patch_id))


def caption_keys(layout: TokenLayout) -> torch.Tensor:
    """(n_text,) stream positions of every caption token."""
    key = ("peer_caption_keys",)
    if key not in layout._cache:
        layout._cache[key] = torch.nonzero(layout.is_text).flatten()
    return layout._cache[key]


def shot_video(layout: TokenLayout) -> list[tuple[int, int, int]]:
    """Per shot: (shot, first stream position of its video, frames)."""
    out = []
    for seg, start in zip(layout.segments, layout.segment_starts):
        if seg.kind == "video":
            out.append((seg.shot, start, seg.frames))
    return sorted(out)


def caption_groups(layout: TokenLayout) -> list[tuple[torch.Tensor, torch.Tensor, None]]:
    """One group per caption segment: its tokens attend every caption and their own shot's video."""
    text = caption_keys(layout)
    P = layout.tokens_per_frame
    video = {s: (start, frames * P) for s, start, frames in shot_video(layout)}
    groups = []
    for seg, start in zip(layout.segments, layout.segment_starts):
        if seg.kind == "text":
            v0, n = video[seg.shot]
            groups.append((torch.arange(start, start + seg.tokens), torch.cat([text, torch.arange(v0, v0 + n)]), None))
    return groups


def caption_pairs(layout: TokenLayout) -> int:
    """Pairs of the caption rule alone: caption queries (all captions + own shot's video) and every video
    query's caption keys."""
    n_text = layout.num_text_tokens
    P = layout.tokens_per_frame
    video = {s: frames * P for s, _, frames in shot_video(layout)}
    total = layout.num_video_tokens * n_text
    for seg in layout.segments:
        if seg.kind == "text":
            total += seg.tokens * (n_text + video[seg.shot])
    return total


def caption_rule(layout: TokenLayout, device: torch.device | str, video_rule: Rule) -> Rule:
    """The full predicate: caption keys always; a caption query its own shot; video x video by ``video_rule``."""
    text, shot, _, _ = token_tables(layout, device)

    def rule(qi, kj):
        tq, tk = text[qi], text[kj]
        same = shot[qi] == shot[kj]
        return tk | (tq & same) | (~tq & ~tk & same & video_rule(qi, kj))

    return rule


def token_blocks(layout: TokenLayout, block_shape: tuple[int, int], order: torch.Tensor | None = None):
    """(q-block (L,), kv-block (L,), QB, KB) of every stream position when tokens run in ``order`` (None: stream
    order) cut into ``bq``-query and ``bk``-key blocks."""
    L = layout.num_tokens
    rank = torch.arange(L) if order is None else torch.empty(L, dtype=torch.int64).index_put_(
        (order.cpu(),), torch.arange(L))
    bq, bk = block_shape
    return rank // bq, rank // bk, -(-L // bq), -(-L // bk)


def caption_block_pairs(layout: TokenLayout, block_shape: tuple[int, int],
                        order: torch.Tensor | None = None) -> torch.Tensor:
    """(QB, KB) float64: the caption rule's pairs in every tile: caption queries (every caption and their
    shot's video) and every video query x every caption key (a routed family adds its video x video pairs)."""
    L = layout.num_tokens
    qb, kb, QB, KB = token_blocks(layout, block_shape, order)
    text = layout.is_text
    captions = plan_block_pairs(build_plan(caption_groups(layout), L, disjoint=False), L, 1, block_shape, flat=False,
                                order=order)[0].double()
    video_q = torch.bincount(qb[~text], minlength=QB).double()
    text_k = torch.bincount(kb[text], minlength=KB).double()
    return captions + video_q[:, None] * text_k[None, :]


@dataclass
class GroupedPlan(Plan):
    """A static pattern's plan: its (layout-cached) group plan (impl ``gather``) or block mask (impl ``flex``)."""

    groups: GroupPlan | None = None
    flex: FlexBlocks | None = None


class StaticVideoBackend(PeerImplMixin, AttentionBackend):
    """A peer family whose pattern depends on the layout alone (see the module docstring)."""

    def video_rule(self, layout: TokenLayout, device: torch.device | str) -> Rule:
        raise NotImplementedError

    def video_groups(self, layout: TokenLayout) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        raise NotImplementedError

    def video_pairs(self, layout: TokenLayout) -> int:
        raise NotImplementedError

    # ---------------------------------------------------------------- pattern and plan
    def rule(self, layout: TokenLayout, device: torch.device | str = "cpu") -> Rule:
        """The whole pattern's predicate ``rule(qi, kj)`` over token indices on ``device``."""
        self.check_layout(layout)
        return caption_rule(layout, device, self.video_rule(layout, device))

    def predicate(self, layout: TokenLayout, qi: torch.Tensor, kj: torch.Tensor) -> torch.Tensor:
        return self.rule(layout, qi.device)(qi, kj)

    def group_plan(self, layout: TokenLayout) -> GroupPlan:
        """The disjoint groups of the whole pattern (caption rule included), built once per layout."""
        key = ("peer_group_plan", self.name, self.pattern_params)
        if key not in layout._cache:
            self.check_layout(layout)
            text = caption_keys(layout)
            groups = list(caption_groups(layout))
            for q_idx, k_idx, mask in self.video_groups(layout):
                if text.numel():
                    k_idx = torch.cat([text, k_idx])
                    if mask is not None:
                        mask = torch.cat([torch.ones(mask.shape[0], text.numel(), dtype=torch.bool), mask], 1)
                groups.append((q_idx, k_idx, mask))
            layout._cache[key] = build_plan(groups, layout.num_tokens, disjoint=True)
        return layout._cache[key]

    def block_counts(self, layout: TokenLayout, block: int | None = None) -> torch.Tensor:
        """(1, QB, KB) attended pairs per ``block x block`` tile in :meth:`kernel_order` (cached per layout;
        ``block`` defaults to :data:`flex_blocks.BLOCK`)."""
        block = block or flex_blocks.BLOCK
        key = ("peer_block_counts", self.name, self.pattern_params, block)
        if key not in layout._cache:
            layout._cache[key] = plan_block_pairs(self.group_plan(layout), layout.num_tokens, 1, (block, block),
                                                  flat=False, order=self.kernel_order(layout))
        return layout._cache[key]

    def flex_blocks(self, layout: TokenLayout, device: torch.device | str, block: int | None = None) -> FlexBlocks:
        """The pattern as a FlexAttention BlockMask in :meth:`kernel_order` (cached per layout, device, block)."""
        block = block or flex_blocks.BLOCK
        compiled = self.selected_impl(device).compiled
        key = ("peer_flex_blocks", self.name, self.pattern_params, str(torch.device(device)), block, compiled)
        if key not in layout._cache:
            layout._cache[key] = flex_blocks.build(self.block_counts(layout, block), self.rule(layout, device),
                                                   layout.num_tokens, block=block, order=self.kernel_order(layout),
                                                   device=device, compiled=compiled)
        return layout._cache[key]

    def _prepare(self, q, k, layout, *, training, generator, scale=None) -> GroupedPlan:
        B, H, _, D = q.shape
        if self.selected_impl(q.device).flex:
            return GroupedPlan(layout, B, H, D, q.device, scale=scale, flex=self.flex_blocks(layout, q.device))
        return GroupedPlan(layout, B, H, D, q.device, scale=scale, groups=self.group_plan(layout).to(q.device))

    def forward(self, q, k, v, plan: GroupedPlan) -> torch.Tensor:
        if plan.flex is not None:
            return flex_blocks.run(q, k, v, plan.flex, plan.softmax_scale)
        return attend_groups(q, k, v, plan.groups, scale=plan.softmax_scale, flat=False)

    def _pattern(self, plan: Plan) -> torch.Tensor:
        L = plan.layout.num_tokens
        idx = torch.arange(L)
        mask = self.predicate(plan.layout, idx[:, None], idx[None, :])
        return mask.to(plan.device).expand(plan.batch, plan.heads, L, L)

    # ---------------------------------------------------------------- accounting
    def kernel_order(self, layout: TokenLayout) -> torch.Tensor | None:
        """The token order a block-sparse kernel of this family runs in (None: stream order); block density
        (moc-spec §10) counts blocks in it."""
        return None

    def block_density_of(self, layout: TokenLayout, block_shape: tuple[int, int]) -> float:
        grid = plan_block_grid(self.group_plan(layout), layout.num_tokens, 1, block_shape, flat=False,
                               order=self.kernel_order(layout))
        return density(grid)

    def plan_block_density(self, plan: GroupedPlan, block_shape: tuple[int, int]) -> float:
        return self.block_density_of(plan.layout, block_shape)

    def estimate_block_density(self, layout: TokenLayout, block_shape: tuple[int, int]) -> float:
        """Static pattern: the layout determines it, the same figure as measured."""
        return self.block_density_of(layout, block_shape)

    def plan_stats(self, plan: GroupedPlan) -> AttentionStats:
        """Measured: the attended pairs of the plan's groups (the keys each group's queries attend; the flex
        path runs the same pattern)."""
        bh = plan.batch * plan.heads
        pairs = self.group_plan(plan.layout).pairs
        return AttentionStats(plan.batch, plan.heads, plan.layout.num_tokens, plan.head_dim, bh * pairs)

    def estimate(self, layout, *, head_dim, batch=1, heads=1) -> AttentionStats:
        """Analytic: caption-rule pairs plus the family's closed-form video pairs."""
        self.check_layout(layout)
        pairs = caption_pairs(layout) + self.video_pairs(layout)
        return AttentionStats(batch, heads, layout.num_tokens, head_dim, batch * heads * pairs)

    def workspace_bytes(self, layout, *, batch, heads, head_dim, dtype, device="cpu", requires_grad=False) -> int:
        """``gather``: gathered q (once), k and v (per group), the bucket outputs and their re-ordered copy, the
        masks (bool, and the float copy SDPA makes of one bucket's), the group index lists, SDPA's scratch; the
        backward holds the gradients of every gathered tensor as well. ``flex``: the group plan it is counted
        from (host) and :func:`flex_blocks.flex_workspace_bytes`."""
        plan = self.group_plan(layout)
        if self.selected_impl(device).flex:
            L = layout.num_tokens
            host = 16 * (plan.gathered_keys + plan.rows) + plan.mask_elements if torch.device(device).type == "cpu" else 0
            return host + flex_workspace_bytes(grids=1, tokens=L, batch=batch, heads=heads, head_dim=head_dim,
                                               dtype=dtype, compiled=self.selected_impl(device).compiled,
                                               requires_grad=requires_grad, tables=8 * 8 * L) + layout_bytes(L)
        return grouped_workspace(plan, batch=batch, heads=heads, head_dim=head_dim,
                                 dtype=dtype, requires_grad=requires_grad) + layout_bytes(layout.num_tokens)


def grouped_workspace(plan: GroupPlan, *, batch: int, heads: int, head_dim: int, dtype: torch.dtype,
                      requires_grad: bool) -> int:
    """Upper bound of :func:`grouped.attend_groups`'s working set for ``plan`` shared by B*H rows."""
    e = itemsize(dtype)
    bh = batch * heads
    rows = bh * plan.rows * head_dim * e
    keys = bh * plan.gathered_keys * head_dim * e
    masks = plan.mask_elements * (1 + e)
    lse = bh * plan.rows * 4
    forward = 3 * rows + 2 * keys + masks + lse + KERNEL_SCRATCH_BYTES
    index = 8 * (plan.gathered_keys + 2 * plan.rows)
    if requires_grad:
        forward += 2 * rows + 2 * keys + 4 * bh * plan.rows * head_dim * 4
    return forward + index
