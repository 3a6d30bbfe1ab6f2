"""MoC impl ``"triton"``: Triton kernels that read the routing directly (forward and backward).

Prepare (timed with routing, all on the tensors' device, no host synchronisation):
``selected`` -> a CSR of routed (query, chunk) pairs grouped by (batch*head, chunk) with
``argsort`` + ``bincount``, and a tile list (``BLOCK_M`` pairs of one group per program) sized by
an upper bound that needs no ``.item()``: dead tiles run no key blocks. Layout-only index data
(anchor groups, chunk-sorted token order, per-token shot/chunk/caption ids) is cached on the
layout, per device.

Forward: one kernel for anchor partials, one for routed partials (gathered query rows against a
chunk's keys, masked only where a key is already an anchor of the query), one exact LSE merge.
Backward: the same partials recomputed with the final LSE (flash-attention's decomposition),
dq/dk/dv accumulated in float32 with atomics. No ``[L, L]`` tensor anywhere.

On CUDA the kernels are compiled by Triton; on CPU they run in Triton's interpreter (exact, very
slow: for tests only). Needs the ``triton`` package; without it the impl reports itself
unavailable with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mocbench.backends.moc.gather_index import GatherIndex, gather_index
from mocbench.backends.moc.sizes import MoCSizes
from mocbench.workspace import KERNEL_SCRATCH_BYTES

BLOCK_M = 64
BLOCK_N = 64
_MERGE_ROWS = 64


def _launch(dtype: torch.dtype, head_dim_padded: int) -> dict:
    """Key-block size and pipeline depth: float32 tiles are twice as large as bf16/fp16 ones, so
    with head_dim 128 they take smaller key blocks and one stage to stay inside shared memory.
    (Chosen from tile sizes, not tuned on a GPU: nothing here has run on one yet.)"""
    if dtype == torch.float32 and head_dim_padded >= 128:
        return {"BLOCK_N": 32, "num_warps": 4, "num_stages": 1}
    return {"BLOCK_N": BLOCK_N, "num_warps": 4, "num_stages": 2}


def _kernels(device_type: str) -> dict:
    from mocbench.backends.moc.triton_kernels import kernels

    return kernels(device_type)


@dataclass(frozen=True, eq=False)
class _LayoutDev:
    """Layout-only index data on one device."""

    anchor: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # (q_idx (G, n), k_idx (G, nk)) int32, per bucket
    tok_idx: torch.Tensor  # (L,) int32 token positions in chunk-sorted order
    chunk_off: torch.Tensor  # (C+1,) int32
    tok_text: torch.Tensor  # (L,) int32 1 for caption tokens
    tok_shot: torch.Tensor  # (L,) int32
    tok_chunk: torch.Tensor  # (L,) int32


def _layout_dev(plan, idx: GatherIndex) -> _LayoutDev:
    key = ("moc_triton_layout", plan.structure.chunks.rule, plan.structure.text_anchor,
           plan.structure.local_anchor, str(plan.device))
    cache = plan.layout._cache
    if key not in cache:
        ct, dev = plan.structure.chunks, plan.device
        i32 = lambda t: t.to(device=dev, dtype=torch.int32).contiguous()  # noqa: E731
        cache[key] = _LayoutDev(
            tuple((i32(b.q_idx_gn), i32(b.k_idx_gk)) for b in idx.buckets), i32(idx.token_index_l),
            i32(torch.tensor(idx.offsets)), i32(ct.is_text[ct.chunk_id]), i32(plan.layout.shot_id), i32(ct.chunk_id))
    return cache[key]


@dataclass(frozen=True, eq=False)
class TritonState:
    lay: _LayoutDev
    K: int
    G: int  # BH * C groups; tile_group == G marks a dead tile
    group_ptr: torch.Tensor  # (G+1,) int32, G = BH*C
    rows_e: torch.Tensor  # (E_max,) int32 query row bh*L + i, grouped (tail: unused)
    slots_e: torch.Tensor  # (E_max,) int32 slot row*K + k
    tile_group: torch.Tensor  # (T_max,) int32 group of each tile (G: dead tile)
    tile_start: torch.Tensor  # (T_max,) int32 first pair of each tile


def prepare_triton(plan) -> TritonState:
    idx = gather_index(plan.layout, plan.structure)
    lay = _layout_dev(plan, idx)
    sel = plan.selected
    B, H, L, K = sel.shape
    BH, C, dev = B * H, plan.structure.num_chunks, sel.device
    G = BH * C
    if K == 0:
        empty = torch.zeros(0, dtype=torch.int32, device=dev)
        return TritonState(lay, 0, G, torch.zeros(G + 1, dtype=torch.int32, device=dev), empty, empty, empty, empty)
    if BH * L * K + G >= 2**31:
        raise ValueError(f"moc impl 'triton': batch*heads*tokens*slots = {BH * L * K} exceeds its int32 pair "
                         "indices; split the batch or heads across calls")
    sel = sel.reshape(BH, L, K)
    # a chunk repeated within a row counts once (route() never repeats; hand-made plans may)
    srt = sel.sort(-1).values
    dup = torch.zeros_like(sel, dtype=torch.bool)
    dup[..., 1:] = (srt[..., 1:] == srt[..., :-1]) & (srt[..., 1:] >= 0)
    srt = srt.masked_fill(dup, -1)
    # slots are positions in the sorted row: same set of chunks, each once
    bh = torch.arange(BH, device=dev).view(BH, 1, 1)
    grp = torch.where(srt >= 0, bh * C + srt, G).flatten()  # (E_max,), G = no pair
    grp_sorted, order = torch.sort(grp, stable=True)
    # group g's pairs are sorted positions group_ptr[g]:group_ptr[g+1] (searchsorted, unlike bincount on
    # CUDA, never reads a size back to the host)
    group_ptr = torch.searchsorted(grp_sorted, torch.arange(G + 1, device=dev))
    counts = group_ptr[1:] - group_ptr[:-1]
    rows_e = (order // K).to(torch.int32)
    slots_e = order.to(torch.int32)
    n_tiles = (counts + BLOCK_M - 1) // BLOCK_M
    tile_end = torch.cumsum(n_tiles, 0)  # inclusive
    T_max = BH * L * K // BLOCK_M + G  # >= sum(ceil(counts / BLOCK_M)) without reading counts
    t = torch.arange(T_max, device=dev)
    tile_group = torch.searchsorted(tile_end, t, right=True)  # G for t beyond the last tile
    g_c = tile_group.clamp(max=G - 1)
    tile_start = group_ptr[g_c] + (t - (tile_end[g_c] - n_tiles[g_c])) * BLOCK_M
    return TritonState(lay, K, G, group_ptr.to(torch.int32), rows_e, slots_e, tile_group.to(torch.int32),
                       tile_start.to(torch.int32))


def _padded(D: int) -> int:
    return max(16, 1 << (D - 1).bit_length())


def _prec(dtype: torch.dtype) -> str:
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"  # "tf32" only matters for fp32 inputs


class _MoCTritonFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, plan, state: TritonState, scale):
        kn = _kernels(q.device.type)
        B, H, L, D = q.shape
        BH, DP, C = B * H, _padded(D), plan.structure.num_chunks
        lay, K = state.lay, state.K
        q2, k2, v2 = (t.reshape(BH * L, D) for t in (q, k, v))
        qk_scale = scale * 1.4426950408889634
        prec = _prec(q.dtype)
        launch = _launch(q.dtype, DP)
        oa = torch.zeros(BH * L, DP, dtype=torch.float32, device=q.device)
        lsea = torch.full((BH * L,), float("-inf"), dtype=torch.float32, device=q.device)
        for q_idx, k_idx in lay.anchor:
            G_a, n_q = q_idx.shape
            grid = (triton_cdiv(n_q, BLOCK_M), G_a, BH)
            kn["anchor_fwd"][grid](q2, k2, v2, oa, lsea, q_idx, k_idx, L, n_q, k_idx.shape[1], qk_scale,
                                   D=D, DP=DP, BLOCK_M=BLOCK_M, PREC=prec, **launch)
        o_slots = torch.zeros(max(1, BH * L * K), DP, dtype=torch.float32, device=q.device)
        lse_slots = torch.full((max(1, BH * L * K),), float("-inf"), dtype=torch.float32, device=q.device)
        if K:
            kn["routed_fwd"][(state.tile_group.numel(),)](
                q2, k2, v2, o_slots, lse_slots, state.tile_group, state.tile_start, state.group_ptr, state.rows_e,
                state.slots_e, lay.chunk_off, lay.tok_idx, lay.tok_text, lay.tok_shot, lay.tok_chunk, L, C, state.G,
                qk_scale, D=D, DP=DP, BLOCK_M=BLOCK_M, TEXT_ANCHOR=plan.structure.text_anchor,
                LOCAL_SHOT=plan.structure.local_anchor == "shot", PREC=prec, **launch)
        out = torch.empty(BH * L, D, dtype=q.dtype, device=q.device)
        lse = torch.empty(BH * L, dtype=torch.float32, device=q.device)
        kn["merge"][(triton_cdiv(BH * L, _MERGE_ROWS),)](oa, lsea, o_slots, lse_slots, out, lse, BH * L, K,
                                                        D=D, DP=DP, BLOCK_M=_MERGE_ROWS)
        ctx.plan, ctx.state, ctx.scale = plan, state, scale
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mark_non_differentiable(lse)
        return out.view(B, H, L, D), lse.view(B, H, L)

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        plan, state, scale = ctx.plan, ctx.state, ctx.scale
        kn = _kernels(q.device.type)
        B, H, L, D = q.shape
        BH, DP, C = B * H, _padded(D), plan.structure.num_chunks
        lay, K = state.lay, state.K
        q2, k2, v2 = (t.reshape(BH * L, D) for t in (q, k, v))
        do2 = dout.reshape(BH * L, D).to(q.dtype).contiguous()
        delta = (do2.float() * out.float()).sum(-1)
        dq, dk, dv = (torch.zeros(BH * L, DP, dtype=torch.float32, device=q.device) for _ in range(3))
        qk_scale = scale * 1.4426950408889634
        prec = _prec(q.dtype)
        launch = _launch(q.dtype, DP)
        for q_idx, k_idx in lay.anchor:
            G_a, n_q = q_idx.shape
            kn["anchor_bwd"][(triton_cdiv(n_q, BLOCK_M), G_a, BH)](
                q2, k2, v2, do2, lse, delta, dq, dk, dv, q_idx, k_idx, L, n_q, k_idx.shape[1], qk_scale, scale,
                D=D, DP=DP, BLOCK_M=BLOCK_M, PREC=prec, **launch)
        if K:
            kn["routed_bwd"][(state.tile_group.numel(),)](
                q2, k2, v2, do2, lse, delta, dq, dk, dv, state.tile_group, state.tile_start, state.group_ptr,
                state.rows_e, lay.chunk_off, lay.tok_idx, lay.tok_text, lay.tok_shot, lay.tok_chunk, L, C, state.G,
                qk_scale, scale, D=D, DP=DP, BLOCK_M=BLOCK_M,
                TEXT_ANCHOR=plan.structure.text_anchor, LOCAL_SHOT=plan.structure.local_anchor == "shot", PREC=prec,
                **launch)
        shape = q.shape
        return (*(g[:, :D].to(q.dtype).reshape(shape) for g in (dq, dk, dv)), None, None, None)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def triton_kernel(q, k, v, plan, state: TritonState, scale: float) -> torch.Tensor:
    """The Triton kernels on the plan's device CSR (dtype and plan checked by ``run_impl``)."""
    q_, k_, v_ = (t.contiguous() for t in (q, k, v))
    return _MoCTritonFn.apply(q_, k_, v_, plan, state, scale)[0]


def triton_workspace_bytes(s: MoCSizes) -> int:
    """impl ``triton`` (device bytes): layout index data (int32); the prepare step's sort of the
    (B*H*L, K) routing (values, int64 indices, duplicates, group keys, stable argsort with its
    buffers), group counts and offsets over G = B*H*C groups, the int32 pair and slot lists and the
    tile list (T_max = E/BLOCK_M + G); forward: the float32 anchor partial (N, DP) and one float32
    partial per routed slot (N*K, DP) with their LSEs; backward: ``delta`` with its float32 copies
    and float32 dq, dk, dv accumulators (N, DP) each."""
    D, DP, E, N = s.head_dim, _padded(s.head_dim), s.pairs, s.rows
    G = s.bh * s.chunks
    total = (s.tokens + s.anchor_keys) * 4 + 4 * s.tokens * 4 + (s.chunks + 1) * 4 + KERNEL_SCRATCH_BYTES
    if s.slots:
        t_max = E // BLOCK_M + G
        total += 2 * E * 8 + E + 4 * E * 8 + 3 * E * 8 + 3 * (G + 1) * 8 + 2 * E * 4 + 5 * t_max * 8
    forward = N * DP * 4 + N * 4 + max(1, E) * (DP + 1) * 4 + N * 4
    backward = 3 * N * D * 4 + N * 4 + 3 * N * DP * 4 if s.requires_grad else 0
    return total + forward + backward
