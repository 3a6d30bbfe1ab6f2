"""Radial Attention (Li et al. 2025, "Radial Attention: O(n log n) Sparse Attention with Energy Decay for
Long Video Generation"), docs/specs/radial.md.

A static mask whose spatial window shrinks as the temporal distance grows. For a video query at frame
``i``, patch ``s`` (index inside the frame) and a video key of the same shot at frame ``j``, patch ``t``,
with ``d = |i - j|`` and ``P`` tokens per frame:

* ``sink`` and ``j == 0`` (the shot's first frame): attended (attention sink);
* ``d <= dense_frames``: attended (whole neighbouring frames);
* otherwise, with ``D(d) = 2^bitlen(P) / 2^bitlen(d)`` (the window halves each time ``d`` doubles):
  attended iff the frame pair is kept, ``D(d) >= min_width`` or ``d mod floor(min_width / D(d)) == 0``
  (below ``min_width`` tokens the frames are decimated instead), and ``|s - t| <= max(decay * D(d), min_width)``.

Captions follow the caption rule (video_static.py). Execution: groups of up to ``QUERY_BLOCK`` patches of
one query frame; each attends, per key frame, the contiguous patch range its band can reach, with a mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mocbench.backends.peer_impl import ANY_IMPL, check_impl
from mocbench.backends.video_static import StaticVideoBackend, device_table, shot_video, token_tables
from mocbench.layout import TokenLayout
from mocbench.registry import register_backend

QUERY_BLOCK = 64  # patches of one frame per group (execution only; the function does not depend on it)


@dataclass(frozen=True, kw_only=True)
class RadialParams:
    dense_frames: int = 1  # frames within this distance are attended whole (HunyuanVideo's setting)
    decay: float = 1.0  # scale of the window (the released code's decay_factor)
    min_width: int = 1  # narrowest window in tokens; 1 = the paper's token-level mask (released kernels: 128)
    sink: bool = True  # the shot's first frame is attended by every video query
    impl: str = "auto"  # gather (CPU) | flex (FlexAttention; CUDA, or eager CPU forward) | auto (by device)

    def __post_init__(self) -> None:
        check_impl(self.impl)
        if self.dense_frames < 0:
            raise ValueError(f"dense_frames must be >= 0 frames, got {self.dense_frames}")
        if not (math.isfinite(self.decay) and self.decay > 0):
            raise ValueError(f"decay must be a finite float > 0, got {self.decay}")
        if self.min_width < 1:
            raise ValueError(f"min_width must be >= 1 token, got {self.min_width}")


def band(d: int, P: int, p: RadialParams) -> tuple[bool, float]:
    """(kept, width) of a frame pair at distance ``d``: width ``inf`` = the whole frame."""
    if d <= p.dense_frames:
        return True, math.inf
    decay_len = 2.0 ** (P.bit_length() - d.bit_length())
    kept = decay_len >= p.min_width or d % int(p.min_width / decay_len) == 0
    return kept, max(p.decay * decay_len, float(p.min_width))


def band_pairs(P: int, width: float) -> int:
    """#{(s, t) in [0, P)^2 : |s - t| <= width}."""
    k = P - 1 if width >= P - 1 else math.floor(width)
    return P + 2 * (k * P - k * (k + 1) // 2)


@register_backend("radial", family="radial", caps=ANY_IMPL, params=RadialParams)
class Radial(StaticVideoBackend):
    """Radial attention: a static window that shrinks with temporal distance (plus sink frame)."""

    def _tables(self, layout: TokenLayout, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(kept (F,) bool, reach (F,) int64) by frame distance, F = the longest shot's frames: a key at patch
        distance ``|s - t|`` is in the band iff ``|s - t| <= reach`` (``floor`` of the width: distances are
        integers; a whole frame: P)."""
        def build():
            F, P = max(layout.frames_per_shot), layout.tokens_per_frame
            rows = [band(d, P, self.params) for d in range(F)]
            return (torch.tensor([r[0] for r in rows]),
                    torch.tensor([P if math.isinf(r[1]) else math.floor(r[1]) for r in rows], dtype=torch.int64))

        return device_table(layout, ("radial_tables", self.params.dense_frames, self.params.decay,
                                     self.params.min_width), device, build)

    def video_rule(self, layout, device):
        kept, reach = self._tables(layout, device)
        _, _, f, p = token_tables(layout, device)
        far, sink = kept.numel() - 1, self.params.sink

        def rule(qi, kj):
            d = (f[qi] - f[kj]).abs().clamp(max=far)  # caption rows (f = -1) are never read
            out = kept[d] & ((p[qi] - p[kj]).abs() <= reach[d])
            return out | (f[kj] == 0) if sink else out

        return rule

    def video_groups(self, layout):
        P = layout.tokens_per_frame
        rule = self.video_rule(layout, "cpu")
        groups = []
        for _, start, frames in shot_video(layout):
            for i in range(frames):
                for p0 in range(0, P, QUERY_BLOCK):
                    p1 = min(p0 + QUERY_BLOCK, P)
                    keys = []
                    for j in range(frames):
                        kept, width = band(abs(i - j), P, self.params)
                        if (self.params.sink and j == 0) or width >= P - 1:
                            lo, hi = 0, P
                        elif kept:
                            lo, hi = max(0, p0 - int(width)), min(P, p1 + int(width))
                        else:
                            continue
                        keys.append(torch.arange(start + j * P + lo, start + j * P + hi))
                    q_idx = torch.arange(start + i * P + p0, start + i * P + p1)
                    k_idx = torch.cat(keys)
                    mask = rule(q_idx[:, None], k_idx[None, :])
                    groups.append((q_idx, k_idx, None if bool(mask.all()) else mask))
        return groups

    def video_pairs(self, layout):
        P = layout.tokens_per_frame
        total = 0
        for _, _, F in shot_video(layout):
            for d in range(F):
                pairs_at_d = F if d == 0 else 2 * (F - d)  # ordered frame pairs (i, j) with |i - j| = d
                if self.params.sink:
                    pairs_at_d -= 1  # the pair with j = 0 is counted whole below
                kept, width = band(d, P, self.params)
                if kept:
                    total += pairs_at_d * band_pairs(P, width)
            if self.params.sink:
                total += F * P * P
        return total
