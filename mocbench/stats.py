"""Attention accounting shared by every backend (moc-spec §7).

Per (batch, head) and layer, forward:
  attention  = 4 * D * pairs         (QK^T and PV, 2 FLOPs per multiply-add)
  routing    = 2 * L * C * D         (query x chunk-descriptor scores; MoC only;
                                      2 * T * C * D with T query tiles under tile routing, §9)
  pooling    = L * D                 (mean-pooling keys into chunk descriptors; MoC only;
                                      + L * D pooling queries into tiles when tile > 1)
  dense      = 4 * L^2 * D
Backward attention counts 2.5x forward attention (flash-attention's convention).
All counts are Python ints, so a million-token layout never overflows.
Several calls (layers, denoising steps, samples of different lengths) add up with :func:`sum_stats`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

BACKWARD_FACTOR = 2.5


@dataclass(frozen=True)
class AttentionStats:
    """Attended pairs and FLOPs of one attention call (summed over batch and heads), or of several
    calls added up by :func:`sum_stats`."""

    batch: int
    heads: int
    tokens: int
    head_dim: int
    pairs: int
    routing_flops: int = 0
    pooling_flops: int = 0
    num_chunks: int = 0
    # Set only on a sum of calls with different token counts (then ``tokens`` is the longest call's):
    # the exact sums over the calls of B*H*L^2 and B*H*L, which batch*heads*tokens^2 could not give.
    summed_dense_pairs: int | None = None
    summed_queries: int | None = None
    # moc-spec §10, asked for with ``block_shape=(bq, bk)``: the fraction of the query x key grid of bq x bk
    # blocks that holds an attended pair (what a block-sparse kernel computes). None with a block_shape:
    # not determined by the layout and config (it depends on routing); analytic figures never guess it.
    block_shape: tuple[int, int] | None = None
    block_density: float | None = None

    @property
    def dense_pairs(self) -> int:
        if self.summed_dense_pairs is not None:
            return self.summed_dense_pairs
        return self.batch * self.heads * self.tokens * self.tokens

    @property
    def sparsity(self) -> float:
        return 1.0 - self.pairs / self.dense_pairs

    @property
    def block_sparsity(self) -> float | None:
        """1 - block_density: the sparsity a block-sparse kernel can use (None when not determined)."""
        return None if self.block_density is None else 1.0 - self.block_density

    @property
    def attention_flops(self) -> int:
        return 4 * self.head_dim * self.pairs

    @property
    def total_flops(self) -> int:
        return self.attention_flops + self.routing_flops + self.pooling_flops

    @property
    def dense_flops(self) -> int:
        return 4 * self.head_dim * self.dense_pairs

    @property
    def flops_reduction(self) -> float:
        """dense / total: how many times fewer FLOPs than dense attention."""
        return self.dense_flops / self.total_flops

    @property
    def backward_attention_flops(self) -> float:
        return BACKWARD_FACTOR * self.attention_flops

    @property
    def mean_keys_per_query(self) -> float:
        return self.pairs / _queries(self)

def sum_stats(parts: Iterable[AttentionStats]) -> AttentionStats:
    """Several attention calls as one: pairs and FLOPs summed, ``batch`` summed (one per sample and
    call), so ``sparsity = 1 - sum(pairs) / sum(B*H*L^2)``. Every call must share ``heads`` and
    ``head_dim``; ``num_chunks`` is the largest call's. Calls of one token count give a plain
    ``AttentionStats(sum B, H, L, D, ...)``; mixed token counts keep the exact dense-pair and query sums.
    Block density is averaged over calls of one token count and one block shape, else None."""
    parts = list(parts)
    if not parts:
        raise ValueError("sum_stats needs at least one AttentionStats, got none")
    for name in ("heads", "head_dim"):
        values = sorted({getattr(p, name) for p in parts})
        if len(values) > 1:
            raise ValueError(f"sum_stats adds calls with one {name}; got {name} = {values}")
    mixed = len({p.tokens for p in parts}) > 1 or any(p.summed_dense_pairs is not None for p in parts)
    # Block densities average over the calls' grids (equal when the calls share L and block_shape).
    shapes = {p.block_shape for p in parts}
    block_shape = shapes.pop() if len(shapes) == 1 else None
    block_density = None
    if block_shape is not None and not mixed and all(p.block_density is not None for p in parts):
        block_density = sum(p.block_density * p.batch for p in parts) / sum(p.batch for p in parts)
    return AttentionStats(
        batch=sum(p.batch for p in parts), heads=parts[0].heads, tokens=max(p.tokens for p in parts),
        head_dim=parts[0].head_dim, pairs=sum(p.pairs for p in parts),
        routing_flops=sum(p.routing_flops for p in parts), pooling_flops=sum(p.pooling_flops for p in parts),
        num_chunks=max(p.num_chunks for p in parts),
        summed_dense_pairs=sum(p.dense_pairs for p in parts) if mixed else None,
        summed_queries=sum(_queries(p) for p in parts) if mixed else None,
        block_shape=block_shape, block_density=block_density,
    )


def _queries(stats: AttentionStats) -> int:
    return stats.summed_queries if stats.summed_queries is not None else stats.batch * stats.heads * stats.tokens


def routing_cost(batch: int, heads: int, tokens: int, num_chunks: int, head_dim: int, *,
                 query_tiles: int | None = None, tile: int = 1) -> tuple[int, int]:
    """(routing FLOPs, pooling FLOPs) of MoC's chunk scoring, summed over batch and heads: per query, or
    with tile routing per query tile (``query_tiles`` = T tiles of at most ``tile`` positions, whose mean
    queries are pooled when ``tile > 1``)."""
    bh = batch * heads
    rows = tokens if query_tiles is None else query_tiles
    pooled = tokens * (2 if query_tiles is not None and tile > 1 else 1)
    return bh * 2 * rows * num_chunks * head_dim, bh * pooled * head_dim
