"""Exact, fast CPU Mixture of Contexts on a fused C++ kernel (moc impl ``"fused"``).

Same decomposition as impl ``"gather"`` (moc-spec §5 computed as partial attentions over disjoint
key sets merged by log-sum-exp), but both parts run in the C++ kernel of ``csrc/``:

1. **Anchors**: ``anchor_attention`` per bucket of equal-shaped anchor groups (own chunk or own
   shot, plus captions): a group's keys are gathered once, its queries attend them in tiles, and
   each query's normalised output and LSE are written (every token is in exactly one group).
   Groups with more than ``_ANCHOR_KERNEL_MAX_KEYS`` keys use ATen's flash kernel instead.
2. **Routed chunks**: ``routed_index`` turns ``selected`` into a CSR of routed (query, chunk)
   pairs per (batch*head, chunk) and cuts each head's rows into ranges of about equal routed work
   (prepare step, timed with routing). ``routed_attention`` gives each thread whole row ranges:
   for every chunk it gathers the range's queries that routed there into a cache-resident tile,
   attends the chunk's keys (two BLAS calls, vectorised softmax) and folds each row's partial into
   its running output in place (online softmax across chunks). No (pairs x D) buffer exists.
   Chunks only partly un-anchored for some query (``fixed:m`` chunks spanning two shots with
   ``local_anchor="shot"``) are computed with a key mask by :func:`partials.routed_piece` and
   merged afterwards by log-sum-exp.
3. Rows are owned by one thread each, so the in-place merge needs no atomics or locks.
4. **Backward** (custom autograd.Function): anchors through ATen's flash backward
   (:func:`partials.anchor_backward`); routed chunks in ``routed_backward``, which recomputes each
   tile's probabilities from the final LSE and accumulates dk, dv per chunk (one writer per chunk)
   and dq in per-thread buffers (flash attention's decomposition: each partial's exact share).

float32 and float64 run natively; bfloat16/float16 are computed in float32 and rounded once.
The kernel is built at first use (see :mod:`cpu_ext`); when it cannot be, this impl reports why.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mocbench.backends.moc import cpu_ext
from mocbench.backends.moc.gather_index import GatherIndex, gather_index, gather_index_bytes
from mocbench.backends.moc.partials import (
    add_unsorted,
    anchor_backward,
    anchor_backward_bytes,
    anchor_forward,
    anchor_forward_bytes,
    apply_in_compute_dtype,
    cpu_cast_bytes,
    merge_partial,
    partial_piece_bytes,
    routed_piece,
    routed_piece_bwd,
    sorted_kv,
)
from mocbench.backends.moc.sizes import MoCSizes
from mocbench.workspace import KERNEL_SCRATCH_BYTES


@dataclass(eq=False)
class FusedState:
    """Built by :func:`prepare_fused` (timed with routing)."""

    index: GatherIndex
    K: int  # routed slots per row
    group_ptr: torch.Tensor  # (BH*C+1,) CSR offsets of the (bh, chunk) groups
    rows_e: torch.Tensor  # (E,) query row bh*L + i of every routed pair, grouped, ascending in a group
    row_bounds: torch.Tensor  # (BH, P+1) work items: P ranges of rows per bh with about equal routed pairs
    skip_c: torch.Tensor  # (C,) bool: partly anchored chunk, computed in Python with a mask
    offsets_c: torch.Tensor  # (C+1,) int64 chunk offsets in the chunk-sorted order

    def pieces(self, num_chunks: int):
        """(bh, c, rows_n) for every non-empty group of a partly anchored chunk."""
        out = []
        for c in self.skip_c.nonzero().flatten().tolist():
            for bh in range((self.group_ptr.numel() - 1) // num_chunks):
                g = bh * num_chunks + c
                lo, hi = int(self.group_ptr[g]), int(self.group_ptr[g + 1])
                if hi > lo:
                    out.append((bh, c, self.rows_e[lo:hi]))
        return out


def prepare_fused(plan) -> FusedState:
    ext = cpu_ext.load()
    idx = gather_index(plan.layout, plan.structure)
    C = plan.structure.num_chunks
    sel = plan.selected.cpu()
    B, H, L, K = sel.shape
    # work items: enough row ranges per head for dynamic scheduling to balance the threads
    parts = max(1, -(-4 * torch.get_num_threads() // (B * H)))
    group_ptr, rows_e, row_bounds = ext.routed_index(sel.reshape(B * H, L, K), C, parts)
    return FusedState(idx, K, group_ptr, rows_e, row_bounds, torch.tensor(idx.partial_c, dtype=torch.bool),
                      torch.tensor(idx.offsets, dtype=torch.int64))


# Anchor groups with more keys than this (e.g. a whole shot) go to ATen's CPU flash kernel, whose
# blocked online softmax beats one score row per query over thousands of keys; smaller ones (own
# chunk + captions) to the C++ kernel, which skips the gathers and stacking.
_ANCHOR_KERNEL_MAX_KEYS = 1024


class _MoCFusedFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_bhld, k_bhld, v_bhld, plan, state: FusedState, scale):
        ext = cpu_ext.load()
        B, H, L, D = q_bhld.shape
        BH, idx, K = B * H, state.index, state.K
        q_bld, k_bld, v_bld = (t.reshape(BH, L, D) for t in (q_bhld, k_bhld, v_bhld))
        out_rd = torch.empty(BH * L, D, dtype=q_bhld.dtype)
        lse_r = torch.empty(BH * L, dtype=q_bhld.dtype)
        q_rd, k_rd, v_rd = (t.reshape(BH * L, D) for t in (q_bld, k_bld, v_bld))
        wide = []
        for bucket in idx.buckets:  # every token is a query of exactly one anchor group
            if bucket.k_idx_gk.shape[1] > _ANCHOR_KERNEL_MAX_KEYS:
                wide.append(bucket)
            else:
                ext.anchor_attention(q_rd, k_rd, v_rd, bucket.q_idx_gn, bucket.k_idx_gk, float(scale), L, out_rd,
                                     lse_r)
        if wide:
            anchor_forward(q_bld, k_bld, v_bld, idx, scale, buckets=wide, out=(out_rd, lse_r))
        if K and state.rows_e.numel():
            ks_rd, vs_rd = (sorted_kv(t, idx).reshape(BH * L, D) for t in (k_bld, v_bld))
            ext.routed_attention(q_rd, ks_rd, vs_rd, state.group_ptr, state.rows_e, state.offsets_c, state.skip_c,
                                 state.row_bounds, float(scale), L, out_rd, lse_r)
            for bh, c, rows_n in state.pieces(plan.structure.num_chunks):  # partly anchored chunks
                o, lse = routed_piece(q_rd.index_select(0, rows_n), ks_rd.view(BH, L, D)[bh],
                                       vs_rd.view(BH, L, D)[bh], plan, idx, c, rows_n, L, scale)
                merge_partial(out_rd, lse_r, rows_n, o.to(out_rd.dtype), lse.to(lse_r.dtype))
        ctx.plan, ctx.state, ctx.scale = plan, state, scale
        ctx.save_for_backward(q_bhld, k_bhld, v_bhld, out_rd, lse_r)
        ctx.mark_non_differentiable(lse_r)
        return out_rd.view(B, H, L, D), lse_r.view(B, H, L)

    @staticmethod
    def backward(ctx, dout_bhld, _dlse):
        ext = cpu_ext.load()
        q_bhld, k_bhld, v_bhld, out_rd, lse_r = ctx.saved_tensors
        plan, state, scale = ctx.plan, ctx.state, ctx.scale
        B, H, L, D = q_bhld.shape
        BH, idx = B * H, state.index
        q_bld, k_bld, v_bld = (t.reshape(BH, L, D) for t in (q_bhld, k_bhld, v_bhld))
        do_bld = dout_bhld.to(q_bhld.dtype).reshape(BH, L, D).contiguous()
        dq_bld, dk_bld, dv_bld = anchor_backward(do_bld, q_bld, k_bld, v_bld, out_rd, lse_r, idx, scale)
        if state.K and state.rows_e.numel():
            q_rd, do_rd, o_rd = q_bld.reshape(BH * L, D), do_bld.view(BH * L, D), out_rd
            ks_rd, vs_rd = (sorted_kv(t, idx).reshape(BH * L, D).contiguous() for t in (k_bld, v_bld))
            dks_rd, dvs_rd = torch.zeros_like(ks_rd), torch.zeros_like(vs_rd)
            delta_r = (do_rd * o_rd).sum(-1)
            dq_rd = dq_bld.view(BH * L, D)
            ext.routed_backward(q_rd, ks_rd, vs_rd, do_rd, lse_r, delta_r, state.group_ptr, state.rows_e,
                                state.offsets_c, state.skip_c, float(scale), L, dq_rd, dks_rd, dvs_rd)
            for bh, c, rows_n in state.pieces(plan.structure.num_chunks):  # partly anchored chunks
                dq, dk, dv = routed_piece_bwd(do_rd[rows_n], q_rd[rows_n], ks_rd.view(BH, L, D)[bh],
                                               vs_rd.view(BH, L, D)[bh], o_rd[rows_n], lse_r[rows_n], plan, idx, c,
                                               rows_n, L, scale)
                dq_rd.index_add_(0, rows_n, dq)
                sl = slice(bh * L + idx.offsets[c], bh * L + idx.offsets[c + 1])
                dks_rd[sl] += dk
                dvs_rd[sl] += dv
            add_unsorted(dk_bld, dks_rd, idx)
            add_unsorted(dv_bld, dvs_rd, idx)
        shape = q_bhld.shape
        return dq_bld.view(shape), dk_bld.view(shape), dv_bld.view(shape), None, None, None


def fused_kernel(q, k, v, plan, state: FusedState, scale: float) -> torch.Tensor:
    """The impl's entry under :func:`mocbench.backends.moc.impl.run_impl` (plan checked, scale resolved)."""
    return apply_in_compute_dtype(_MoCFusedFn, q, k, v, plan, state, scale)[0]


def fused_workspace_bytes(s: MoCSizes) -> int:
    """impl ``fused``: the layout index; ``routed_index``'s CSR (kept in the plan) and its build
    buffers; forward: output and LSE (kept for backward), the wider anchor buckets on ATen's flash, the
    C++ kernels' per-thread tiles (keys of an anchor group <= 1024, a score tile <= 2^18, query and
    output tiles, running max/sum); backward: the anchors' gradients, chunk-sorted dk, dv, ``delta``,
    per-thread (L, D) dq buffers and tiles. Partly anchored chunks run :func:`partials.routed_piece`."""
    D, f, E, T = s.head_dim, s.f, s.pairs, s.threads
    rows_d = s.rows * D * f
    kv_sorted = 2 * rows_d if s.reordered else 0
    groups = s.bh * s.chunks + 1
    kept = (groups * 8 + E * 8 + s.chunks * 9) if s.slots else 0
    built = (E + 3 * groups * 8 + E * 8) if s.slots else 0
    tiles = T * ((2 * 1024 * D + (1 << 18) + 4 * 256 * D) * f + 2 * s.tokens * f)
    forward = tiles + max(anchor_forward_bytes(s), kv_sorted + partial_piece_bytes(s))
    if s.requires_grad:
        routed_bwd = 2 * rows_d + rows_d + s.rows * f + kv_sorted + T * s.tokens * D * f \
            + T * (3 * 256 * D + 2 * (1 << 17)) * f + 3 * s.chunks * 8 + partial_piece_bytes(s)
        forward = max(forward, 3 * rows_d + max(anchor_backward_bytes(s), routed_bwd if s.slots else 0))
    saved = rows_d + s.rows * f
    return (cpu_cast_bytes(s) + gather_index_bytes(s) + KERNEL_SCRATCH_BYTES + kept
            + max(built, saved + forward))
