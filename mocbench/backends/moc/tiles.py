"""Query tiles of tile routing (moc-spec §9), from the layout alone.

A *piece* is a maximal run of consecutive stream positions in one chunk and one segment; the query
tiles are the pieces cut by the grid cells ``[g * tile, (g + 1) * tile)``. A tile therefore never
crosses a chunk, segment or grid boundary: all its queries share one chunk and one shot, hence one
query class (anchors and candidates), and routing decides once per tile, by the tile's mean query.

``tile = 1`` makes every token its own tile (per-token routing).

Legend: L tokens, T tiles, D head_dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mocbench.chunking import ChunkRule
from mocbench.layout import TokenLayout
from mocbench.pooling import group_mean


@dataclass(frozen=True, eq=False)
class QueryTiles:
    """The query tiles of one layout under one chunking and tile size (CPU int64 tensors)."""

    tile: int
    token_tile: torch.Tensor  # (L,) tile of every query, tiles numbered in stream order
    tile_start: torch.Tensor  # (T,) first stream position of each tile
    tile_size: torch.Tensor  # (T,) queries per tile

    @property
    def num_tiles(self) -> int:
        return int(self.tile_size.numel())

    def mean_queries(self, q_bhld: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """qbar: (B, H, T, D) ``mean_{i in t} q_i`` in ``dtype`` (exactly ``q`` when ``tile = 1``)."""
        return group_mean(q_bhld, self.token_tile, self.tile_size, dtype)


def query_tiles(layout: TokenLayout, chunking: str, tile: int) -> QueryTiles:
    """Tiles per token, O(L) (cached on the layout)."""
    key = ("query_tiles", chunking, tile)
    cache = layout._cache
    if key in cache:
        return cache[key]
    chunk, segment = layout.chunks(chunking).chunk_id, layout.segment_id
    L = layout.num_tokens
    pos = torch.arange(L)
    starts = pos % tile == 0  # a grid cell starts
    starts[1:] |= (chunk[1:] != chunk[:-1]) | (segment[1:] != segment[:-1])  # a piece starts
    tile_start = pos[starts]
    tile_size = torch.diff(tile_start, append=torch.tensor([L]))
    out = QueryTiles(tile, torch.cumsum(starts, 0) - 1, tile_start, tile_size)
    cache[key] = out
    return out


def count_tiles(layout: TokenLayout, chunking: str, tile: int) -> int:
    """T without per-token work: every piece [a, b) meets ``floor((b-1)/tile) - floor(a/tile) + 1`` grid
    cells. O(pieces); equals ``query_tiles(...).num_tiles``."""
    a, b = pieces(layout, chunking)
    return int(((b - 1) // tile - a // tile + 1).sum())


def pieces(layout: TokenLayout, chunking: str | ChunkRule) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, stop) of every piece in stream order: the chunk table's runs, merged where two adjacent
    runs share a chunk and a segment (e.g. the rows of a ``cubes`` chunk as wide as the frame)."""
    ct = layout.chunks(chunking)
    stop = torch.cumsum(ct.piece_len, 0)
    start = stop - ct.piece_len
    seg_starts = torch.tensor(layout.segment_starts, dtype=torch.int64)
    segment = torch.searchsorted(seg_starts, start, right=True) - 1  # zero-length segments never hold a run
    keep = ct.piece_len > 0
    start, stop, chunk, segment = start[keep], stop[keep], ct.piece_chunk[keep], segment[keep]
    first = torch.ones_like(keep[keep])
    first[1:] = (chunk[1:] != chunk[:-1]) | (segment[1:] != segment[:-1])
    last = torch.roll(first, -1)
    last[-1:] = True
    return start[first], stop[last]
