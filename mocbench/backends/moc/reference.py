"""The exact MoC reference: materialise the (B, H, L, L) mask and run masked softmax.

O(L^2) memory by design: it is the readable specification that fast implementations are
tested against, and the pattern source for ``attention_pattern``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mocbench.anchors import anchor_mask
from mocbench.backends.moc.routing import selected_to_chunk_mask
from mocbench.backends.moc.sizes import MoCSizes
from mocbench.workspace import sdpa_bytes


def moc_mask(plan) -> torch.Tensor:
    """(B, H, L, L) bool: anchors OR keys of routed chunks."""
    layout, structure = plan.layout, plan.structure
    device = plan.selected.device
    mask = anchor_mask(layout, structure).to(device)[None, None]
    if plan.selected.shape[-1]:
        routed_bhlc = selected_to_chunk_mask(plan.selected, structure.num_chunks)
        chunk_id = structure.chunks.chunk_id.to(device)
        mask = mask | routed_bhlc[..., chunk_id]  # key j is routed iff its chunk is
    return mask.expand(plan.batch, plan.heads, -1, -1)


def reference_kernel(q, k, v, plan, state, scale: float) -> torch.Tensor:
    """The (B, H, L, L) pattern as a boolean mask of SDPA (``state`` unused: no prepare step)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=moc_mask(plan), scale=scale)


def reference_workspace_bytes(s: MoCSizes) -> int:
    """The (L, L) anchor mask and one comparison temporary (built on the host; on CUDA one device copy);
    with routing, the (B, H, L, C+1) membership map, the routed keys and their union with the anchors
    ((B, H, L, L) bool each); then SDPA with that mask."""
    L2 = s.tokens * s.tokens
    total = (2 if s.on_cpu else 1) * L2
    mask_elements = L2
    if s.slots:
        total += s.rows * (s.chunks + 1) + s.pairs * 8 + 2 * s.bh * L2
        mask_elements = s.bh * L2
    return total + sdpa_bytes(s.batch, s.heads, s.tokens, s.head_dim, s.dtype, s.device,
                              requires_grad=s.requires_grad, mask_elements=mask_elements)
