"""MoC on FlexAttention: a ``BlockMask`` built directly from the routing, plus a per-token mask_mod.

The block mask is assembled from the plan with ``BlockMask.from_kv_blocks`` (never
``create_block_mask`` over a closure, which would evaluate the mask on every token pair):

* anchored pairs per (q-block, kv-block) = (queries of each class in the q-block)
  @ (anchored keys of each class in the kv-block): a block is **full** when every pair in it
  is anchored, **partial** when some are; full blocks skip the mask_mod entirely;
* routed blocks = (chunks routed by any query of the q-block) @ (chunk -> kv-block incidence); a routed
  block is **full** when its keys lie in one chunk that every query of the q-block routed (with tile
  routing whose tiles and chunks sit on the 128-grid, every routed block), so mask_mod runs only on
  boundary blocks. The anchor counts and incidences depend on the layout alone and are cached on it.

The per-token ``mask_mod`` then decides exactly, inside partial blocks, whether query i
attends key j: text anchor, own shot / own chunk, or key's chunk among i's ``K`` routed slots.

Legend: B batch, H heads, L tokens, Lp tokens padded to the block size, C chunks, Q query
classes, QB/KB q/kv blocks, K routed slots per query.

Two implementations share this block mask. ``flex`` runs ``torch.compile(flex_attention)`` on every
device: on CUDA Triton's fused kernel, on CPU inductor's C++ template (forward only; the first call per
shape compiles, about 10 s), so it is a real peer of the other impls on CPU too (it skips inactive
blocks and runs ``mask_mod`` only on partial ones). ``flex_eager`` runs FlexAttention uncompiled: every
score is materialised (O(L^2) memory) and block sparsity is ignored, so it is only a correctness path
(tests, rehearsals, debugging a compiled run).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.attention.flex_attention import BlockMask

from mocbench.backends.flex_blocks import flex_attend, kv_blocks
from mocbench.backends.moc.sizes import MoCSizes
from mocbench.workspace import fused_attention_bytes

BLOCK = 128


@dataclass
class FlexState:
    block_mask: BlockMask


def _counts(block_of: torch.Tensor, group_of: torch.Tensor, n_blocks: int, n_groups: int) -> torch.Tensor:
    """(n_groups, n_blocks) number of tokens of each group in each block."""
    flat = torch.bincount(group_of * n_blocks + block_of, minlength=n_groups * n_blocks)
    return flat.view(n_groups, n_blocks)


def _pad(t: torch.Tensor, length: int, value: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, length - t.shape[-1]), value=value)


def anchored_block_pairs(layout, structure, block_q: int, block_k: int) -> torch.Tensor:
    """(QB, KB) float64: number of anchored (query, key) pairs in every block (exact)."""
    L = layout.num_tokens
    QB, KB = -(-L // block_q), -(-L // block_k)
    pos = torch.arange(L)
    qb, kb = pos // block_q, pos // block_k
    ct = structure.chunks
    Q = structure.num_classes
    queries_per_class = _counts(qb, structure.token_class, QB, Q).T.double()  # (QB, Q)
    is_text = layout.is_text
    text_kb = torch.bincount(kb[is_text], minlength=KB).double()  # (KB,)
    if structure.local_anchor == "shot":
        local = _counts(kb, layout.shot_id, KB, layout.num_shots).double()  # (S, KB)
        local_text = _counts(kb[is_text], layout.shot_id[is_text], KB, layout.num_shots).double()
        own = structure.class_shot
    else:
        local = _counts(kb, ct.chunk_id, KB, ct.num_chunks).double()  # (C, KB)
        local_text = local * ct.is_text[:, None]
        own = structure.class_chunk
    anchored_keys = local[own]  # (Q, KB)
    if structure.text_anchor:
        anchored_keys = anchored_keys + text_kb[None, :] - local_text[own]
    return queries_per_class @ anchored_keys


@dataclass(frozen=True)
class _LayoutBlocks:
    """Per-layout block facts (cached on the layout: no per-call host work of O(QB x Q x KB))."""

    anchor_full: torch.Tensor  # (QB, KB) bool: every pair anchored
    anchor_partial: torch.Tensor  # (QB, KB) bool: some but not all pairs anchored
    queries: torch.Tensor  # (QB,) queries per q-block
    incidence: torch.Tensor  # (C, KB) float32: 1 where chunk c has a key in kv-block kb
    whole_chunk: torch.Tensor  # (KB,) the chunk holding every key of kv-block kb, C where none does


def layout_blocks(layout, structure, block: int) -> _LayoutBlocks:
    key = ("flex_blocks", str(structure.chunks.rule), structure.text_anchor, structure.local_anchor, block)
    if key not in layout._cache:
        L, C = layout.num_tokens, structure.num_chunks
        QB = KB = -(-L // block)
        pos = torch.arange(L)
        anchored = anchored_block_pairs(layout, structure, block, block)
        n_in_block = torch.bincount(pos // block, minlength=QB)
        full = anchored == (n_in_block[:, None] * n_in_block[None, :]).double()
        keys = _counts(pos // block, structure.chunks.chunk_id, KB, C)  # (C, KB) keys of chunk c in kb
        whole = torch.where((keys == n_in_block[None, :]).any(0), keys.argmax(0), C)
        layout._cache[key] = _LayoutBlocks(full, (anchored > 0) & ~full, n_in_block, (keys > 0).float(), whole)
    return layout._cache[key]


def build_block_mask(plan, block: int = BLOCK) -> BlockMask:
    layout, structure, selected = plan.layout, plan.structure, plan.selected
    device = selected.device
    B, H, L, K = selected.shape
    C = structure.num_chunks
    QB = KB = -(-L // block)
    Lp = QB * block

    # Anchors: exact pair counts per block decide full vs partial (per layout, cached).
    lb = layout_blocks(layout, structure, block)
    full, partial = lb.anchor_full.to(device), lb.anchor_partial.to(device)  # (QB, KB)

    # Routing: how many queries of a q-block routed each chunk, then which kv-blocks the chunks touch.
    # A kv-block lying inside one chunk that every query of the q-block routed is full (tile routing with
    # tiles and chunks on the block grid: every routed block), so its mask_mod never runs.
    if K:
        qb = (torch.arange(L, device=device) // block)[None, None, :, None]
        sel = _distinct(torch.where(selected < 0, C, selected), C)
        count = torch.zeros(B, H, QB * (C + 1), dtype=torch.float32, device=device)
        count.scatter_add_(-1, (qb * (C + 1) + sel).reshape(B, H, -1), torch.ones(B, H, L * K, device=device))
        count = count.view(B, H, QB, C + 1)
        routed = (count[..., :C] > 0).float() @ lb.incidence.to(device) > 0  # (B, H, QB, KB)
        whole = lb.whole_chunk.to(device)  # C (the empty-slot column) where no chunk holds the whole kv-block
        by_all = (count.gather(-1, whole.expand(B, H, QB, KB)) == lb.queries.to(device)[:, None].float()) \
            & (whole < C)  # the kv-block's whole chunk, routed by every query of the q-block
        full = full[None, None] | (routed & by_all)
        partial = (partial[None, None] | routed) & ~full
    else:
        full = full[None, None].expand(B, H, QB, KB)
        partial = partial[None, None].expand(B, H, QB, KB)

    kv_num, kv_idx = kv_blocks(partial.contiguous())
    full_num, full_idx = kv_blocks(full.contiguous())
    mask_mod = _mask_mod(layout, structure, selected, Lp)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block,
                                    mask_mod=mask_mod, seq_lengths=(L, L))


def _distinct(sel: torch.Tensor, empty: int) -> torch.Tensor:
    """(..., K) chunk ids with repeats within a row replaced by ``empty`` (a hand-made plan may repeat one)."""
    ordered, _ = sel.sort(dim=-1)
    repeat = torch.zeros_like(ordered, dtype=torch.bool)
    repeat[..., 1:] = ordered[..., 1:] == ordered[..., :-1]
    return ordered.masked_fill(repeat, empty)


def _mask_mod(layout, structure, selected, Lp: int):
    device = selected.device
    K = selected.shape[-1]
    is_text = _pad(layout.is_text.to(device), Lp, False) if structure.text_anchor else None
    own = layout.shot_id if structure.local_anchor == "shot" else structure.chunks.chunk_id
    own = _pad(own.to(device), Lp, -1)
    chunk = _pad(structure.chunks.chunk_id.to(device), Lp, -2)  # padding never equals a routed id
    sel = _pad(selected.transpose(-1, -2), Lp, -1).transpose(-1, -2).contiguous() if K else None

    def mask_mod(b, h, q_idx, kv_idx):
        keep = own[q_idx] == own[kv_idx]
        if is_text is not None:
            keep = keep | is_text[kv_idx]
        for slot in range(K):  # unrolled at trace time: K is static
            keep = keep | (sel[b, h, q_idx, slot] == chunk[kv_idx])
        return keep

    return mask_mod


def prepare_flex(plan) -> FlexState:
    return FlexState(build_block_mask(plan))


def flex_kernel(q, k, v, plan, state: FlexState, scale: float) -> torch.Tensor:
    """impl ``flex``: compiled FlexAttention on the plan's BlockMask (CUDA: Triton; CPU: C++, forward)."""
    return flex_attend(q, k, v, state.block_mask, scale, compiled=True)


def flex_eager_kernel(q, k, v, plan, state: FlexState, scale: float) -> torch.Tensor:
    """impl ``flex_eager``: uncompiled FlexAttention on the same BlockMask (every score materialised)."""
    return flex_attend(q, k, v, state.block_mask, scale, compiled=False)


def flex_workspace_bytes(s: MoCSizes) -> int:
    """impl ``flex``: the block mask (see :func:`block_mask_bytes`) and compiled FlexAttention, a fused
    kernel on every device (bounded like the fused dense kernels)."""
    return block_mask_bytes(s) + fused_attention_bytes(s.batch, s.heads, s.tokens, s.head_dim, s.dtype,
                                                       requires_grad=s.requires_grad)


def flex_eager_workspace_bytes(s: MoCSizes) -> int:
    """impl ``flex_eager``: the block mask and uncompiled FlexAttention, which materialises the (B, H, L, L)
    scores (float32, or float64) three times and ``mask_mod``'s boolean temporaries."""
    w = 8 if s.dtype == torch.float64 else 4
    return block_mask_bytes(s) + s.bh * s.tokens * s.tokens * (3 * w + s.slots + 4)


def block_mask_bytes(s: MoCSizes) -> int:
    """The block mask of both flex impls, over a grid of QB x KB = (L/128)^2 blocks: anchored pair counts per block (per-class token counts (QB, Q) and anchored keys (Q, KB),
    float64, on the host; one copy and the full-block test on the device); with routing the
    (B, H, QB, C+1) hit map, the chunk-to-block incidence and the (B, H, QB, KB) routed blocks;
    :func:`build_block_mask`'s two ``kv_blocks`` (bool, int8, argsort values and int64 indices, int32)
    and the BlockMask's transposed indices; the padded routing for ``mask_mod``. On CPU host and
    device are the same memory."""
    L, K, C = s.tokens, s.slots, s.chunks
    QB = KB = -(-L // BLOCK)
    grid, bh_grid = QB * KB, s.bh * QB * KB
    host = 2 * s.classes * QB * 8 + 3 * max(s.shots, C) * KB * 8 + 3 * s.classes * KB * 8 + 2 * grid * 8 + 3 * L * 8
    device = 2 * grid * 8 + 2 * grid + 2 * bh_grid * (1 + 1 + 1 + 17 + 4) + 2 * bh_grid * (4 + 8)
    if K:
        device += 3 * s.pairs * 8 + s.bh * QB * (C + 1) * 4 + 2 * C * KB * 4 + bh_grid * (4 + 1 + 1 + 1)
        device += 3 * s.pairs * 8 + s.pairs * 4 + bh_grid * (4 + 1 + 1)  # distinct slots, counts, full test
    device += 3 * QB * BLOCK * 8 + 2 * s.bh * QB * BLOCK * K * 8
    return device if not s.on_cpu else host + device
