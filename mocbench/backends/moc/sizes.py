"""The sizes a MoC call's working set depends on, from the layout and params alone (no tensors).

``MoCBackend.workspace_bytes`` builds one :class:`MoCSizes` and adds up the pieces that live next
to the code they describe: :func:`mocbench.anchors.structure_bytes`, :func:`routing.routing_bytes`,
:func:`accounting.measured_pairs_bytes` and the implementation's own ``MoCImpl.workspace``.
Everything here is O(C + S + pieces), like the analytic accounting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mocbench.anchors import QueryClasses, candidate_totals
from mocbench.workspace import compute_itemsize, itemsize


@dataclass(frozen=True)
class MoCSizes:
    """One call: (B, H, L, D) inputs of ``dtype`` on ``device``; C chunks, Q query classes, S shots;
    K routed slots per query; the anchor groups' keys; the longest chunk; partly anchored chunks."""

    batch: int
    heads: int
    tokens: int
    head_dim: int
    dtype: torch.dtype
    device: str
    requires_grad: bool
    chunks: int  # C
    classes: int  # Q
    shots: int  # S
    slots: int  # K = min(top_k, the most candidates any query has): routing's slots per query
    anchor_keys: int  # keys of all anchor groups together (a group: one shot or one chunk)
    max_chunk: int  # tokens of the longest chunk
    partial_chunks: bool  # a routed chunk can be partly anchored (fixed:m across shots, shot anchor)
    reordered: bool  # chunks not contiguous in the stream (fixed:m, cubes:): CPU impls copy k, v chunk-sorted
    threads: int  # CPU threads (per-thread buffers of the C++ kernels)
    tiles: int = 0  # T query tiles per (batch, head) with tile routing (moc-spec §9); 0: per-token routing

    @property
    def bh(self) -> int:
        return self.batch * self.heads

    @property
    def rows(self) -> int:
        """N = B*H*L query rows."""
        return self.batch * self.heads * self.tokens

    @property
    def pairs(self) -> int:
        """E <= N*K routed (query, chunk) pairs."""
        return self.rows * self.slots

    @property
    def e(self) -> int:
        return itemsize(self.dtype)

    @property
    def f(self) -> int:
        """Bytes per element of the compute type (half types are computed in float32)."""
        return compute_itemsize(self.dtype)

    @property
    def on_cpu(self) -> bool:
        return torch.device(self.device).type == "cpu"


def moc_sizes(classes: QueryClasses, *, top_k: int, causal: bool, batch: int, heads: int, head_dim: int,
              dtype: torch.dtype, device: str, requires_grad: bool, tiles: int = 0) -> MoCSizes:
    ct = classes.chunks
    S, C, L = ct.num_shots, ct.num_chunks, int(ct.sizes.sum())
    n_cand, _ = candidate_totals(classes, causal=causal)
    slots = min(top_k, int(n_cand.max())) if C and classes.num_classes else 0
    n_text = int((ct.sizes * ct.is_text).sum())
    if classes.local_anchor == "shot":  # a group per shot: its tokens + the other shots' captions
        anchor_keys = L + ((S - 1) * n_text if classes.text_anchor else 0)
    else:  # a group per chunk: its tokens + every caption (a caption chunk: the captions alone)
        anchor_keys = L - n_text + C * n_text if classes.text_anchor else L
    eligible = (ct.sizes > 0) & ~(ct.is_text & classes.text_anchor)
    spans = torch.bincount(classes.class_chunk, minlength=C) > 1  # chunk with queries of several shots
    partial = classes.local_anchor == "shot" and bool((spans & eligible).any())
    return MoCSizes(batch, heads, L, head_dim, dtype, str(device), requires_grad, C, classes.num_classes, S, slots,
                    anchor_keys, int(ct.sizes.max()) if C else 0, partial, not ct.rule.contiguous,
                    torch.get_num_threads(), tiles)
