"""Sliding Tile Attention (STA; Zhang et al. 2025, FastVideo), docs/specs/sliding_tile.md.

Each shot's video is cut into tiles of ``tile = (t, h, w)`` (frames x patch rows x patch columns; the
``cubes:t,h,w`` chunking, partial tiles at the edges). A video query in tile ``a`` attends every token of
the tiles ``b`` of its own shot with, per dimension d, ``start_d <= b_d <= start_d + K_d - 1`` where
``K = window`` (in tiles) and ``start_d = clamp(a_d - K_d // 2, 0, max(n_d - K_d, 0))`` (the window is
centred on the query's tile and shifted inside the grid at the borders, never cut), ``n_d`` the shot's
tiles along d. Captions follow the caption rule (video_static.py). Every query of a tile attends the
same keys, so a tile is one group of the gathered execution and the pattern is tile-aligned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mocbench.backends.peer_impl import ANY_IMPL, check_impl
from mocbench.backends.video_static import StaticVideoBackend, device_table, parse_dims, shot_video
from mocbench.layout import TokenLayout
from mocbench.registry import register_backend


@dataclass(frozen=True, kw_only=True)
class SlidingTileParams:
    tile: str = "6,8,8"  # frames, rows, columns of a tile (STA's HunyuanVideo tile)
    window: str = "3,3,3"  # tiles per dimension: frames, rows, columns
    impl: str = "auto"  # gather (CPU) | flex (FlexAttention; CUDA, or eager CPU forward) | auto (by device)

    def __post_init__(self) -> None:
        parse_dims("tile", self.tile, "frames,rows,columns")
        parse_dims("window", self.window, "frames,rows,columns")
        check_impl(self.impl)


def window_start(a: torch.Tensor | int, n: torch.Tensor | int, size: int):
    """First tile of the window of ``size`` tiles around tile ``a`` in a row of ``n`` tiles: centred
    (``size // 2`` tiles before), shifted inside ``[0, n)`` at the borders; works on ints and tensors."""
    if isinstance(a, torch.Tensor):
        hi = (n - size).clamp(min=0)
        return torch.minimum((a - size // 2).clamp(min=0), hi)
    return min(max(a - size // 2, 0), max(n - size, 0))


def axis_sum(length: int, tile: int, size: int) -> int:
    """sum over tiles a of |a| * (tokens of the window of a), along one axis of ``length`` tokens."""
    n = -(-length // tile)
    ext = [min(tile, length - i * tile) for i in range(n)]
    total = 0
    for a in range(n):
        s = window_start(a, n, size)
        total += ext[a] * sum(ext[s:min(s + size, n)])
    return total


@register_backend("sliding_tile", family="sliding_tile", caps=ANY_IMPL, params=SlidingTileParams)
class SlidingTile(StaticVideoBackend):
    """Sliding Tile Attention: a static 3D window of tiles around the query's tile (tile-aligned)."""

    @property
    def dims(self) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        return parse_dims("tile", self.params.tile, "f,r,c"), parse_dims("window", self.params.window, "f,r,c")

    @property
    def chunking(self) -> str:
        return "cubes:" + self.params.tile

    def check_layout(self, layout: TokenLayout) -> None:
        if layout.frame_shape is None:
            raise ValueError(f"sliding_tile needs the frame geometry: build the layout with frame_shape=(h, w) "
                             f"(h * w = tokens_per_frame = {layout.tokens_per_frame})")

    def kernel_order(self, layout: TokenLayout) -> torch.Tensor:
        """Tile-major, as STA's kernel runs: each shot's caption, then its tiles one after another."""
        return layout.chunks(self.chunking).token_index

    def _tile_tables(self, layout: TokenLayout, device: torch.device | str = "cpu"):
        """Per token: tile coordinates (3, L) and its shot's tiles along frames, rows, columns (3, L) (captions:
        their shot's, never read); per shot: tiles per axis (S, 3)."""
        def build():
            (t, h, w), _ = self.dims
            H, W = layout.frame_shape
            coords = torch.stack([layout.frame_id // t, layout.row_id // h, layout.col_id // w])
            grid = torch.tensor([[-(-frames // t), -(-H // h), -(-W // w)] for _, _, frames in shot_video(layout)])
            return coords, grid[layout.shot_id.clamp(min=0)].T.contiguous(), grid

        return device_table(layout, ("sliding_tile_tables", self.params.tile), device, build)

    def video_rule(self, layout, device):
        coords, n, _ = self._tile_tables(layout, device)
        _, window = self.dims

        def rule(qi, kj):
            out = None
            for d in range(3):
                start = window_start(coords[d][qi], n[d][qi], window[d])
                b = coords[d][kj]
                inside = (b >= start) & (b < start + window[d])
                out = inside if out is None else out & inside
            return out

        return rule

    def video_groups(self, layout):
        ct = layout.chunks(self.chunking)
        coords, _, grid = self._tile_tables(layout)
        _, window = self.dims
        video = (~ct.is_text).nonzero().flatten().tolist()
        first = ct.order
        shot = layout.shot_id
        where = {}
        for c in video:
            pos = int(first[c])
            where[(int(shot[pos]), *(int(coords[d][pos]) for d in range(3)))] = c
        members = [ct.token_index[int(ct.offsets[c]):int(ct.offsets[c + 1])] for c in range(ct.num_chunks)]
        groups = []
        for c in video:
            pos = int(first[c])
            s, a = int(shot[pos]), [int(coords[d][pos]) for d in range(3)]
            ranges = []
            for d in range(3):
                st = window_start(a[d], int(grid[s, d]), window[d])
                ranges.append(range(st, min(st + window[d], int(grid[s, d]))))
            keys = [members[where[(s, bt, bh, bw)]] for bt in ranges[0] for bh in ranges[1] for bw in ranges[2]]
            groups.append((members[c], torch.cat(keys), None))
        return groups

    def video_pairs(self, layout):
        (t, h, w), (kt, kh, kw) = self.dims
        H, W = layout.frame_shape
        spatial = axis_sum(H, h, kh) * axis_sum(W, w, kw)
        return sum(axis_sum(frames, t, kt) * spatial for _, _, frames in shot_video(layout))
