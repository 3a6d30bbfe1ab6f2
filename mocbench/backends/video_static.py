"""The shared frame of the peer video families (docs/specs/README.md): the caption rule, static patterns
as gathered groups, and their accounting.

Caption rule (every peer family, multi-shot streams): every query attends every caption token of the
stream (the text anchor, as in MoC); a caption query also attends every video token of its own shot;
a video query attends video keys only as its family's rule says (within its own shot, unless the
family's rule reaches further). A static family subclasses :class:`StaticVideoBackend` and gives

* ``video_rule(layout, qi, kj)``: bool, broadcast over token-index tensors ``qi``/``kj``, whether video
  query ``qi`` attends video key ``kj`` of the *same shot* (only read where both are video, same shot);
* ``video_groups(layout)``: disjoint groups ``(q_idx, k_idx, mask | None)`` covering every video query,
  ``k_idx`` the group's video keys (the base adds every caption key), ``mask`` which of them each query
  attends (None: all of them);
* ``video_pairs(layout)``: the closed-form number of (video query, video key) pairs, for ``estimate``.

The base builds the (cached) group plan, runs it with :func:`grouped.attend_groups`, inspects the
pattern with the same predicate, and counts pairs measured (from the plan's groups) and analytically.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mocbench.backend import AttentionBackend, Plan
from mocbench.backends.grouped import GroupPlan, attend_groups, build_plan, plan_block_grid
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


def caption_rule(layout: TokenLayout, qi: torch.Tensor, kj: torch.Tensor, video_rule) -> torch.Tensor:
    """The full predicate: caption keys always; a caption query its own shot; video x video by ``video_rule``."""
    text = layout.is_text
    shot = layout.shot_id
    tq, tk = text[qi], text[kj]
    same = shot[qi] == shot[kj]
    return tk | (tq & same) | (~tq & ~tk & same & video_rule(layout, qi, kj))


@dataclass
class GroupedPlan(Plan):
    """A static pattern's plan: its (layout-cached) group plan."""

    groups: GroupPlan | None = None


class StaticVideoBackend(AttentionBackend):
    """A peer family whose pattern depends on the layout alone (see the module docstring)."""

    def video_rule(self, layout: TokenLayout, qi: torch.Tensor, kj: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def video_groups(self, layout: TokenLayout) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        raise NotImplementedError

    def video_pairs(self, layout: TokenLayout) -> int:
        raise NotImplementedError

    # ---------------------------------------------------------------- pattern and plan
    def predicate(self, layout: TokenLayout, qi: torch.Tensor, kj: torch.Tensor) -> torch.Tensor:
        return caption_rule(layout, qi, kj, self.video_rule)

    def group_plan(self, layout: TokenLayout) -> GroupPlan:
        """The disjoint groups of the whole pattern (caption rule included), built once per layout."""
        key = ("peer_group_plan", self.name, self.params)
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

    def _prepare(self, q, k, layout, *, training, generator, scale=None) -> GroupedPlan:
        B, H, _, D = q.shape
        return GroupedPlan(layout, B, H, D, q.device, scale=scale, groups=self.group_plan(layout).to(q.device))

    def forward(self, q, k, v, plan: GroupedPlan) -> torch.Tensor:
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
        """Measured: the attended pairs of the plan's groups (the keys each group's queries attend)."""
        bh = plan.batch * plan.heads
        return AttentionStats(plan.batch, plan.heads, plan.layout.num_tokens, plan.head_dim, bh * plan.groups.pairs)

    def estimate(self, layout, *, head_dim, batch=1, heads=1) -> AttentionStats:
        """Analytic: caption-rule pairs plus the family's closed-form video pairs."""
        self.check_layout(layout)
        pairs = caption_pairs(layout) + self.video_pairs(layout)
        return AttentionStats(batch, heads, layout.num_tokens, head_dim, batch * heads * pairs)

    def workspace_bytes(self, layout, *, batch, heads, head_dim, dtype, device="cpu", requires_grad=False) -> int:
        """Gathered q (once), k and v (per group), the bucket outputs and their re-ordered copy, the masks
        (bool, and the float copy SDPA makes of one bucket's), the group index lists, SDPA's scratch; the
        backward holds the gradients of every gathered tensor as well."""
        return grouped_workspace(self.group_plan(layout), batch=batch, heads=heads, head_dim=head_dim,
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
