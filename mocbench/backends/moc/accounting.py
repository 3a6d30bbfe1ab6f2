"""Attended-pair counts of MoC: measured from a routing plan, or analytic from the layout.

Both use the per-class tables of :mod:`structure`: a query of class q attends
``anchor_size[q]`` anchor keys plus ``uncovered[q, c]`` keys for each routed chunk c.
The analytic count assumes each class routes ``min(top_k, #candidates)`` chunks of the
class's mean uncovered size; it equals the measured count whenever candidate chunks are
equal-sized (or every candidate is selected), and is close otherwise.
"""

from __future__ import annotations

import torch

from mocbench.backends.moc.structure import AnchorStructure


def measured_pairs(structure: AnchorStructure, selected_bhlk: torch.Tensor) -> int:
    """Exact attended pairs for a routing ``selected`` (B, H, L, K), summed over B and H."""
    B, H, L, K = selected_bhlk.shape
    token_class = structure.token_class.to(selected_bhlk.device)
    anchors = int(structure.anchor_size.to(selected_bhlk.device)[token_class].sum()) * B * H
    if K == 0:
        return anchors
    C = structure.num_chunks
    flat = structure.uncovered.to(selected_bhlk.device).reshape(-1)
    idx = token_class[None, None, :, None] * C + selected_bhlk.clamp_min(0)
    routed = torch.where(selected_bhlk >= 0, flat[idx], 0)
    return anchors + int(routed.sum())


def analytic_pairs(structure: AnchorStructure, top_k: int) -> float:
    """Expected attended pairs per (batch, head), from the layout alone (eval mode)."""
    size = structure.class_size.to(torch.float64)
    pairs = (size * structure.anchor_size.to(torch.float64)).sum()
    if top_k > 0:
        cand = structure.candidate
        n_cand = cand.sum(1).to(torch.float64)
        sum_u = (structure.uncovered * cand).sum(1).to(torch.float64)
        mean_u = torch.where(n_cand > 0, sum_u / n_cand.clamp_min(1), 0.0)
        pairs = pairs + (size * torch.clamp(n_cand, max=top_k) * mean_u).sum()
    return float(pairs)
