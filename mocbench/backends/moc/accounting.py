"""Attended-pair counts of MoC: measured from a routing plan, or analytic from the layout.

A query of class q attends ``anchor_size[q]`` anchor keys plus ``uncovered[q, c]`` keys for
each routed chunk c (see :mod:`structure`). Measured counts read the ``Q x C`` tables of the
plan's structure; analytic counts need only each class's number of candidates and their summed
uncovered keys (:func:`mocbench.anchors.candidate_totals`, no ``Q x C`` table). The analytic count
assumes each class routes ``min(top_k, #candidates)`` chunks of the class's mean uncovered size;
it equals the measured count whenever candidate chunks are equal-sized (or every candidate is
selected), and is close otherwise.
"""

from __future__ import annotations

import torch

from mocbench.anchors import AnchorStructure, QueryClasses, candidate_totals
from mocbench.backends.moc.sizes import MoCSizes


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


def measured_pairs_bytes(s: MoCSizes) -> int:
    """Device bytes of :func:`measured_pairs`: per-token anchor sizes, then four int64 (B, H, L, K)
    temporaries (clamped slots, flat indices, gathered sizes, the masked result) and the ``>= 0``
    test; on CUDA ``uncovered`` and the token classes copied to the device."""
    total = s.tokens * 8 + 4 * s.pairs * 8 + s.pairs
    if not s.on_cpu:
        total += s.classes * s.chunks * 8 + s.tokens * 8
    return total


def analytic_pairs(classes: QueryClasses, top_k: int, *, causal: bool) -> float:
    """Expected attended pairs per (batch, head), from the layout alone (eval mode)."""
    size = classes.class_size.to(torch.float64)
    pairs = (size * classes.anchor_size.to(torch.float64)).sum()
    if top_k > 0:
        n_cand, sum_u = (t.to(torch.float64) for t in candidate_totals(classes, causal=causal))
        mean_u = torch.where(n_cand > 0, sum_u / n_cand.clamp_min(1), 0.0)
        pairs = pairs + (size * torch.clamp(n_cand, max=top_k) * mean_u).sum()
    return float(pairs)
