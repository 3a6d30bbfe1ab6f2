"""Mean-pooling of per-token vectors over the chunks of a layout (block descriptors for routed families).

``pool_chunks(x, chunks)`` is ``mean_{j in chunk c} x_j`` for every chunk, per (batch, head), in at least
float32 (so float32 and float64 inputs route the same way up to rounding). Differentiable: VSA's coarse
stage attends pooled queries, keys and values and gets gradients through them.
"""

from __future__ import annotations

import torch

from mocbench.chunking import ChunkTable


def pool_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def pool_chunks(x_bhld: torch.Tensor, chunks: ChunkTable) -> torch.Tensor:
    """(B, H, L, D) -> (B, H, C, D): the mean of each chunk's tokens."""
    B, H, _, D = x_bhld.shape
    dt = pool_dtype(x_bhld.dtype)
    cid = chunks.chunk_id.to(x_bhld.device)
    total = torch.zeros(B, H, chunks.num_chunks, D, dtype=dt, device=x_bhld.device).index_add(2, cid, x_bhld.to(dt))
    return total / chunks.sizes.to(device=x_bhld.device, dtype=dt)[:, None]
