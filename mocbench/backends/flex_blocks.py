"""The peer families on FlexAttention: a ``BlockMask`` built from a pattern's block structure, plus the pattern's
own predicate as ``mask_mod`` (the ``flex`` implementation of ``sliding_tile``, ``radial``, ``svg``, ``vsa`` and
``vmoba``; docs/specs/README.md, "Execution on CUDA").

A family gives, for one call:

* ``counts`` (G, QB, KB): the attended (query, key) pairs in every ``block x block`` tile of the query x key grid
  in the order the kernel runs (G = 1 for a pattern shared by every (batch, head), else B*H), computed from the
  pattern's structure (its groups or its routing), never from an L x L tensor;
* ``rule(qi, kj) -> bool``: the exact predicate of the pattern on *stream* positions (the one the oracle tests
  check), pure tensor indexing so that it can be vmapped (eager) or traced (compiled), with
  ``rule(qi, kj, b, h)`` where it differs per (batch, head);
* ``order`` (L,): the token order the kernel runs in (tile-major for STA and VSA; None: stream order).

A tile is **full** when its count is (queries in the q-block) x (keys in the kv-block), **partial** when it is
between, absent when 0; :func:`build` turns that into ``BlockMask.from_kv_blocks`` (``kv_*`` the partial tiles,
``full_kv_*`` the full ones), so the kernel skips absent tiles and runs ``mask_mod`` only on partial ones.
``mask_mod(b, h, r, s)`` maps kernel positions to stream positions through ``order`` and asks ``rule``.

Execution (:func:`run`): q, k, v are permuted into kernel order, attended, and the output is put back. Impl
``flex`` runs ``torch.compile(flex_attention)`` (CUDA: Triton; CPU: inductor's C++ template, forward only:
torch has no CPU backward for it). Impl ``flex_eager`` runs FlexAttention uncompiled, materialising the
(B, H, L, L) scores and evaluating ``mask_mod`` on every pair. The eager path ignores a BlockMask's tiles, so
the ``mask_mod`` given to it is the kernel's semantics written out (:func:`kernel_semantics`: full tile ->
attended, partial tile -> ``mask_mod``, absent -> not): a test of the eager output checks the tiles the
compiled kernel skips or takes whole, not only the predicate.

Legend: B batch, H heads, L tokens, D head_dim, QB/KB query/key tiles, G grids (1 or B*H).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from mocbench.blocks import DEFAULT_BLOCK_SHAPE
from mocbench.workspace import KERNEL_SCRATCH_BYTES, fused_attention_bytes, itemsize

# FlexAttention's tile (its kernels' default sparse block, 128): the square blocks that block density counts in
# bench rows (moc-spec §10), so a row's block density is the share of tiles this path visits. Tests set smaller.
BLOCK = DEFAULT_BLOCK_SHAPE[0]
_compiled_flex = None

Rule = Callable[..., torch.Tensor]  # rule(qi, kj[, b, h]) -> bool, broadcast over index tensors


@dataclass(frozen=True, eq=False)
class FlexBlocks:
    """A pattern ready for FlexAttention: the block mask the kernel runs, its tiles, and the kernel order."""

    block_mask: BlockMask  # eager: its mask_mod is kernel_semantics(...), see the module docstring
    mask_mod: Callable  # the pattern's mask_mod on kernel positions (what the CUDA kernel runs on partial tiles)
    full: torch.Tensor  # (G, QB, KB) bool
    partial: torch.Tensor  # (G, QB, KB) bool
    order: torch.Tensor | None  # (L,) stream position of kernel position r; None = stream order
    inverse: torch.Tensor | None  # (L,) kernel position of stream position i
    block: int
    compiled: bool = True  # run through torch.compile (impl flex) or eagerly (impl flex_eager)

    @property
    def tiles(self) -> tuple[int, int]:
        """(full, partial) tiles over the G grids."""
        return int(self.full.sum()), int(self.partial.sum())


def block_sizes(tokens: int, block: int) -> torch.Tensor:
    """(NB,) tokens in each block of ``block`` tokens (the last one may be short)."""
    n = -(-tokens // block)
    sizes = torch.full((n,), block, dtype=torch.int64)
    sizes[-1] = tokens - block * (n - 1)
    return sizes


def classify(counts: torch.Tensor, tokens: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(full, partial) bool of the tiles of a (G, QB, KB) pair count grid."""
    n = block_sizes(tokens, block).to(device=counts.device, dtype=counts.dtype)
    full = counts == n[:, None] * n[None, :]
    return full, (counts > 0) & ~full


def kv_blocks(active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., QB, KB) bool -> BlockMask's (num (..., QB) int32, indices (..., QB, KB) int32, active tiles first)."""
    num = active.sum(-1).to(torch.int32)
    idx = torch.argsort((~active).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return num.contiguous(), idx.contiguous()


def kernel_semantics(mask_mod: Callable, full: torch.Tensor, partial: torch.Tensor, block: int,
                     heads: int) -> Callable:
    """The mask a block-sparse FlexAttention kernel computes, as a mask_mod: full tiles attended whole, partial
    tiles by ``mask_mod``, absent tiles never. ``full``/``partial`` are (G, QB, KB), G = 1 (shared by every
    (batch, head)) or B*H (grid ``b * heads + h``)."""
    shared = full.shape[0] == 1

    def emulated(b, h, r, s):
        g = 0 if shared else b * heads + h
        rb, sb = r // block, s // block
        return full[g, rb, sb] | (partial[g, rb, sb] & mask_mod(b, h, r, s))

    return emulated


def build(counts: torch.Tensor, rule: Rule, tokens: int, *, block: int | None = None, order: torch.Tensor | None = None,
          batch: int = 1, heads: int = 1, per_head: bool = False, device: torch.device | str = "cpu",
          compiled: bool = True) -> FlexBlocks:
    """The BlockMask of a pattern from its (G, QB, KB) pair counts (kernel order) and its predicate ``rule`` on
    stream positions (``rule(qi, kj, b, h)`` when ``per_head``); G is 1 (shared) or ``batch * heads``; ``block``
    must be the tile ``counts`` were counted in (default :data:`BLOCK`); ``compiled``: for impl ``flex``
    (else ``flex_eager``, whose mask_mod emulates the tiles)."""
    block = block or BLOCK
    dev = torch.device(device)
    G = counts.shape[0]
    if G not in (1, batch * heads) or counts.shape[1:] != (-(-tokens // block),) * 2:
        raise ValueError(f"counts has shape {tuple(counts.shape)}; expected (1 or batch * heads = {batch * heads}, "
                         f"QB, KB) with QB = KB = ceil({tokens} / {block})")
    full, partial = classify(counts.to(dev), tokens, block)
    shape = (1, 1) if G == 1 else (batch, heads)
    kv_num, kv_idx = kv_blocks(partial.view(*shape, *partial.shape[1:]))
    full_num, full_idx = kv_blocks(full.view(*shape, *full.shape[1:]))
    nb = full.shape[1]
    # Kernel position -> stream position, padded to whole tiles (padding reads token 0 and is never attended;
    # recent kernels bound the indices themselves, older ones may read past L).
    stream = torch.zeros(nb * block, dtype=torch.int64, device=dev)
    stream[:tokens] = torch.arange(tokens, device=dev) if order is None else order.to(dev)
    valid = torch.zeros(nb * block, dtype=torch.bool, device=dev)
    valid[:tokens] = True

    if per_head:
        def mask_mod(b, h, r, s):
            return valid[s] & rule(stream[r], stream[s], b, h)
    else:
        def mask_mod(b, h, r, s):
            return valid[s] & rule(stream[r], stream[s])

    run_mod = mask_mod if compiled else kernel_semantics(mask_mod, full, partial, block, heads)
    block_mask = BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block, mask_mod=run_mod,
                                          seq_lengths=(tokens, tokens))
    inverse = None
    if order is not None:
        inverse = torch.empty(tokens, dtype=torch.int64, device=dev)
        inverse[order.to(dev)] = torch.arange(tokens, device=dev)
    return FlexBlocks(block_mask, mask_mod, full, partial, None if order is None else order.to(dev), inverse, block,
                      compiled)


def eager_flex_attention(q, k, v, block_mask: BlockMask, scale: float) -> torch.Tensor:
    """FlexAttention without compilation (unfused, every score materialised), torch's warning about it
    silenced: the ``flex_eager`` impls of MoC and the peers (tests swap it for a differentiable operator)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        return flex_attention(q, k, v, block_mask=block_mask, scale=scale)


def compiled_flex_attention() -> Callable:
    """``torch.compile(flex_attention)``, built once per process and shared by every FlexAttention path (MoC's
    impl ``flex`` and the peers'): one compiled entry, whose graphs are cached per shape."""
    global _compiled_flex
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def flex_attend(q, k, v, block_mask: BlockMask, scale: float, *, compiled: bool) -> torch.Tensor:
    """FlexAttention on ``block_mask``, compiled (impl ``flex``) or eager (impl ``flex_eager``): the one call
    of every FlexAttention path. CPU FlexAttention refuses inputs that require grad even under no_grad, so
    they are detached there (a CPU call that needs a backward is refused earlier, by the capabilities)."""
    if q.device.type == "cpu" and not torch.is_grad_enabled():
        q, k, v = q.detach(), k.detach(), v.detach()
    if compiled:
        return compiled_flex_attention()(q, k, v, block_mask=block_mask, scale=scale)
    return eager_flex_attention(q, k, v, block_mask, scale)


def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fb: FlexBlocks, scale: float) -> torch.Tensor:
    """Attention of (B, H, L, D) q, k, v under ``fb``: in kernel order, output back in stream order."""
    if fb.order is not None:
        q, k, v = (t.index_select(2, fb.order) for t in (q, k, v))
    out = flex_attend(q, k, v, fb.block_mask, scale, compiled=fb.compiled)
    return out if fb.inverse is None else out.index_select(2, fb.inverse)


def flex_workspace_bytes(*, grids: int, tokens: int, batch: int, heads: int, head_dim: int, dtype: torch.dtype,
                         compiled: bool, requires_grad: bool, tables: int = 0) -> int:
    """Upper bound of the flex path's working set: the pair-count grids (float32, and the host copy they are
    counted in), the full/partial tiles (bool) and BlockMask's four index tensors and their transposes (int32,
    argsort's int64 indices), the padded position tables, ``tables`` bytes of the family's own tables, the
    permuted q, k, v and output, and the attention: a fused kernel compiled; the eager kernel's (B, H, L, L)
    scores, probabilities and masked copy (float32, float64 for float64) and ``mask_mod``'s boolean temporaries."""
    block = BLOCK
    nb = -(-tokens // block)
    grid = grids * nb * nb
    blocks = grid * (4 + 4 + 2 + 2 * 8 + 4 * 4) + 2 * nb * block * 9
    permuted = 4 * batch * heads * tokens * head_dim * itemsize(dtype)
    if compiled:
        attention = fused_attention_bytes(batch, heads, tokens, head_dim, dtype, requires_grad=requires_grad)
    else:
        w = 8 if dtype == torch.float64 else 4
        attention = batch * heads * tokens * tokens * (3 * w + 4) + KERNEL_SCRATCH_BYTES
    return blocks + tables + permuted + attention
