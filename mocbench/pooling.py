"""Mean-pooling of per-token vectors over groups of tokens: the block descriptors of every routed family.

``pool_chunks(x, chunks)`` is ``mean_{j in chunk c} x_j`` for every chunk of a layout's chunking, per (batch,
head), in at least float32 (:func:`pool_dtype`, so float32 and float64 inputs route the same way up to
rounding, in every family): MoC's chunk descriptors phi (moc-spec §4), VSA's pooled cubes, VMoBA's block
keys. :func:`group_mean` is the same mean over any grouping (MoC's query tiles, moc-spec §9). Differentiable: VSA's coarse stage attends pooled queries, keys and values and
gets gradients through them.
"""

from __future__ import annotations

import torch

from mocbench.chunking import ChunkTable

__all__ = ["group_mean", "pool_chunks", "pool_dtype"]

MIN_POOL_DTYPE = torch.float32  # pooled means and the scores against them: at least float32


def pool_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype means (and routing scores) are computed in for inputs of ``dtype``."""
    return torch.promote_types(dtype, MIN_POOL_DTYPE)


def group_mean(x_bhld: torch.Tensor, group_of_token: torch.Tensor, group_sizes: torch.Tensor,
               dtype: torch.dtype) -> torch.Tensor:
    """(B, H, L, D) -> (B, H, G, D) in ``dtype``: the mean of each group's tokens (``group_of_token`` (L,) in
    [0, G), ``group_sizes`` (G,) > 0)."""
    B, H, _, D = x_bhld.shape
    dev = x_bhld.device
    total = torch.zeros(B, H, group_sizes.numel(), D, dtype=dtype, device=dev).index_add(
        2, group_of_token.to(dev), x_bhld.to(dtype))
    return total / group_sizes.to(device=dev, dtype=dtype)[:, None]


def pool_chunks(x_bhld: torch.Tensor, chunks: ChunkTable) -> torch.Tensor:
    """(B, H, L, D) -> (B, H, C, D): the mean of each chunk's tokens, in :func:`pool_dtype`."""
    return group_mean(x_bhld, chunks.chunk_id, chunks.sizes, pool_dtype(x_bhld.dtype))
