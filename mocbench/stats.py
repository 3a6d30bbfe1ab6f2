"""Attention accounting shared by every backend (moc-spec §7).

Per (batch, head) and layer, forward:
  attention  = 4 * D * pairs         (QK^T and PV, 2 FLOPs per multiply-add)
  routing    = 2 * L * C * D         (query x chunk-descriptor scores; MoC only)
  pooling    = L * D                 (mean-pooling keys into chunk descriptors; MoC only)
  dense      = 4 * L^2 * D
Backward attention counts 2.5x forward attention (flash-attention's convention).
All counts are Python ints, so a million-token layout never overflows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

BACKWARD_FACTOR = 2.5


@dataclass(frozen=True)
class AttentionStats:
    """Attended pairs and FLOPs of one attention call (summed over batch and heads)."""

    batch: int
    heads: int
    tokens: int
    head_dim: int
    pairs: int
    routing_flops: int = 0
    pooling_flops: int = 0
    num_chunks: int = 0

    @property
    def dense_pairs(self) -> int:
        return self.batch * self.heads * self.tokens * self.tokens

    @property
    def sparsity(self) -> float:
        return 1.0 - self.pairs / self.dense_pairs

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
        return self.pairs / (self.batch * self.heads * self.tokens)

    def as_dict(self) -> dict:
        d = asdict(self)
        for name in ("sparsity", "attention_flops", "total_flops", "dense_flops", "flops_reduction",
                     "backward_attention_flops", "mean_keys_per_query"):
            d[name] = getattr(self, name)
        return d


def routing_cost(batch: int, heads: int, tokens: int, num_chunks: int, head_dim: int) -> tuple[int, int]:
    """(routing FLOPs, pooling FLOPs) of MoC's chunk scoring, summed over batch and heads."""
    bh = batch * heads
    return bh * 2 * tokens * num_chunks * head_dim, bh * tokens * head_dim
