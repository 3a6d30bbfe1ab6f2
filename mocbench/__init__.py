"""mocbench: a benchmark suite for attention backends in long-video diffusion transformers.

Public API::

    layout = mocbench.TokenLayout.multi_shot(text_tokens=[16, 16], frames=[4, 4], tokens_per_frame=64)
    moc = mocbench.get_backend("moc", top_k=2, chunking="frame")
    out = moc(q, k, v, layout)                     # q, k, v: (batch, heads, tokens, head_dim)
    moc.stats(q, k, layout)                        # measured pairs / sparsity / FLOPs
    mocbench.estimate(layout, "moc", head_dim=128, top_k=2)   # analytic, no tensors
"""

from __future__ import annotations

from mocbench import backends as _builtin_backends  # noqa: E402,F401  (registers built-ins)
from mocbench.backend import AttentionBackend, Capabilities, Plan, UnsupportedError
from mocbench.chunking import ChunkRule, ChunkTable
from mocbench.layout import Segment, TokenLayout
from mocbench.registry import backend_spec, get_backend, list_backends, register_backend
from mocbench.stats import AttentionStats

__version__ = "0.1.0"


def estimate(layout: TokenLayout, name: str, *, head_dim: int, batch: int = 1, heads: int = 1,
             block_shape: tuple[int, int] | None = None, **params) -> AttentionStats:
    """Analytic pairs, sparsity and FLOPs of backend ``name`` on ``layout``, without tensors (arguments
    checked by every backend's ``estimate``, see ``AttentionBackend``); with ``block_shape=(bq, bk)`` also
    the block density where the layout and params determine it (None: depends on routing)."""
    return get_backend(name, **params).estimate(layout, head_dim=head_dim, batch=batch, heads=heads,
                                                block_shape=block_shape)


__all__ = [
    "AttentionBackend", "AttentionStats", "Capabilities", "ChunkRule", "ChunkTable", "Plan", "Segment",
    "TokenLayout", "UnsupportedError", "backend_spec", "estimate", "get_backend", "list_backends",
    "register_backend", "__version__",
]
