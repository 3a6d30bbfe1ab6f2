"""Exact, fast CPU Mixture of Contexts: block anchors + MoBA-style routed chunks, merged by LSE.

``o_i = softmax(q_i K_A^T * scale) V_A`` over ``A(i) = anchors(i) U routed keys(i)`` (moc-spec §5)
is computed as a set of *partial* attentions over disjoint key sets, each returning an output
and its log-sum-exp, merged exactly with the log-sum-exp trick:

1. **Anchors** (one partial per query). Queries that share an anchor set form a group: a shot
   (``local_anchor="shot"``: own shot's tokens U every caption token) or a chunk
   (``"chunk"``: own chunk U every caption token). Groups with the same (queries, keys) shape are
   stacked into one fused flash-attention call (``aten._scaled_dot_product_flash_attention_for_cpu``).
2. **Routed chunks** (one partial per routed (query, chunk)). ``selected`` is turned into, for
   every (batch*head, chunk c), the sorted list of queries that routed to c; each such group is one
   flash call of those queries against the keys of c (a contiguous slice of the chunk-sorted keys:
   no key gather, no padding). The partial is merged in place into the running (output, LSE) of
   its queries. A chunk that is *partly* anchored for some query (only ``fixed:m`` chunks that span
   two shots, with ``local_anchor="shot"``) gets an additive ``-inf`` mask over its anchored keys, so
   no key is ever counted twice; every other chunk is wholly un-anchored for the queries routing it.
3. **Backward** (custom ``autograd.Function``): for every partial, flash-attention's backward is
   called with the *final* output and LSE of its queries, which yields exactly that block's share
   of dq, dk, dv (the flash/ring-attention decomposition); shares are summed with index_add.

Assumptions (all guaranteed by :func:`routing.route`): ``selected`` holds candidate chunks (never a
chunk wholly covered by the query's anchors); duplicates and ``-1`` slots are ignored.
Accumulation is in the input dtype for float32/float64; bfloat16/float16 are computed in float32
and rounded once at the end. Float64 uses float64 kernels throughout.

Legend: B batch, H heads, BH = B*H, L tokens, D head_dim, C chunks, G groups, n queries of a group,
m keys of a chunk, E routed (query, chunk) pairs. The partials and their merge: :mod:`partials`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mocbench.backends.moc.gather_index import (
    GatherIndex,
    RoutedGroups,
    gather_index,
    gather_index_bytes,
    routed_groups,
    routed_groups_bytes,
)
from mocbench.backends.moc.partials import (
    add_unsorted,
    anchor_backward,
    anchor_backward_bytes,
    anchor_forward,
    anchor_forward_bytes,
    apply_in_compute_dtype,
    cpu_cast_bytes,
    flash,
    flash_bwd,
    partial_piece_bytes,
    routed_piece,
    routed_piece_bwd,
    sorted_kv,
)
from mocbench.backends.moc.sizes import MoCSizes
from mocbench.workspace import KERNEL_SCRATCH_BYTES

# The final merge runs over bands of rows whose gathered partials take about this many bytes.
_SLAB_BYTES = 64 << 20


def _bands(n_rows: int, K: int, D: int):
    step = max(1, _SLAB_BYTES // (4 * K * D))
    return [(r0, min(n_rows, r0 + step)) for r0 in range(0, n_rows, step)]


# ----------------------------------------------------------------------------- autograd
class _MoCGatherFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_bhld, k_bhld, v_bhld, plan, state, scale):
        B, H, L, D = q_bhld.shape
        BH = B * H
        idx, groups = state.index, state.groups
        q_bld, k_bld, v_bld = (t.reshape(BH, L, D) for t in (q_bhld, k_bhld, v_bhld))
        out_rd, lse_r = anchor_forward(q_bld, k_bld, v_bld, idx, scale)  # 1. anchors
        # 2. routed chunks: one batched flash call per bucket of (bh, chunk) groups
        if groups.num_slots:
            q_rd = torch.cat([q_bld.reshape(BH * L, D), q_bld.new_zeros(1, D)])  # row BH*L: padding
            ks_rd, vs_rd = (sorted_kv(t, idx).reshape(BH * L, D) for t in (k_bld, v_bld))
            outs, lses = [], []
            for bk in groups.buckets:
                G, m = bk.k_rows_gm.shape
                o, lse = flash(q_rd.index_select(0, bk.q_rows_p).view(G, 1, bk.n, D),
                                ks_rd.index_select(0, bk.k_rows_gm.flatten()).view(G, 1, m, D),
                                vs_rd.index_select(0, bk.k_rows_gm.flatten()).view(G, 1, m, D), scale=scale)
                outs.append(o.reshape(G * bk.n, D))
                lses.append(lse.reshape(G * bk.n).to(lse_r.dtype))
            for bh, c, rows_n in groups.pieces:
                o, lse = routed_piece(q_rd.index_select(0, rows_n), ks_rd.view(BH, L, D)[bh], vs_rd.view(BH, L, D)[bh],
                                       plan, idx, c, rows_n, L, scale)
                outs.append(o)
                lses.append(lse.to(lse_r.dtype))
            o_ed = torch.cat(outs + [q_rd.new_zeros(1, D)])  # row P: "no pair"
            lse_e = torch.cat(lses + [lse_r.new_full((1,), float("-inf"))])
            # 3. exact merge, band by band of rows: anchor partial + the K routed partials per row
            K = groups.inv_rk.shape[1]
            for r0, r1 in _bands(BH * L, K, D):
                inv_nk = groups.inv_rk[r0:r1]
                l_nk = lse_e[inv_nk]
                lse_n = torch.logaddexp(lse_r[r0:r1], torch.logsumexp(l_nk, 1))
                w_n1k = (l_nk - lse_n[:, None]).exp_().unsqueeze(1)
                o_nkd = o_ed.index_select(0, inv_nk.flatten()).view(-1, K, D)
                wa_n1 = (lse_r[r0:r1] - lse_n).exp_().unsqueeze(1)
                out_rd[r0:r1].mul_(wa_n1).unsqueeze(1).baddbmm_(w_n1k, o_nkd)
                lse_r[r0:r1] = lse_n
        ctx.plan, ctx.state, ctx.scale = plan, state, scale
        ctx.save_for_backward(q_bhld, k_bhld, v_bhld, out_rd, lse_r)
        ctx.mark_non_differentiable(lse_r)
        return out_rd.view(B, H, L, D), lse_r.view(B, H, L)

    @staticmethod
    def backward(ctx, dout_bhld, _dlse):
        q_bhld, k_bhld, v_bhld, out_rd, lse_r = ctx.saved_tensors
        grads = gather_backward(dout_bhld, q_bhld, k_bhld, v_bhld, out_rd, lse_r, ctx.plan, ctx.state.index,
                                ctx.state.groups, ctx.scale)
        return (*grads, None, None, None)


def gather_backward(dout_bhld, q_bhld, k_bhld, v_bhld, out_rd, lse_r, plan, idx: GatherIndex, groups: RoutedGroups,
                    scale: float):
    """(dq, dk, dv) of MoC attention given its final output and log-sum-exp: for every partial
    (anchor groups, routed groups), flash backward with the final (out, lse) yields exactly that
    block's share; shares are summed."""
    B, H, L, D = q_bhld.shape
    BH = B * H
    q_bld, k_bld, v_bld = (t.reshape(BH, L, D) for t in (q_bhld, k_bhld, v_bhld))
    do_bld = dout_bhld.reshape(BH, L, D).contiguous()
    out_bld = out_rd.view(BH, L, D)
    dq_bld, dk_bld, dv_bld = anchor_backward(do_bld, q_bld, k_bld, v_bld, out_rd, lse_r, idx, scale)
    if groups.num_slots:
        zero = q_bld.new_zeros(1, D)
        ext = lambda t: torch.cat([t.reshape(BH * L, D), zero])  # noqa: E731
        q_rd, do_rd, o_rd = ext(q_bld), ext(do_bld), ext(out_bld)
        lse_r1 = torch.cat([lse_r, lse_r.new_zeros(1)])
        ks_rd, vs_rd = (sorted_kv(t, idx).reshape(BH * L, D) for t in (k_bld, v_bld))
        dks_rd, dvs_rd = torch.zeros_like(ks_rd), torch.zeros_like(vs_rd)
        dqs = []
        for bk in groups.buckets:
            G, m = bk.k_rows_gm.shape
            kr = bk.k_rows_gm.flatten()
            g4 = lambda t, r, n: t.index_select(0, r).view(G, 1, n, -1)  # noqa: E731
            dq, dk, dv = flash_bwd(g4(do_rd, bk.q_rows_p, bk.n), g4(q_rd, bk.q_rows_p, bk.n),
                                    g4(ks_rd, kr, m), g4(vs_rd, kr, m), g4(o_rd, bk.q_rows_p, bk.n),
                                    lse_r1.index_select(0, bk.q_rows_p).view(G, 1, bk.n), 0.0, False, scale=scale)
            dqs.append(dq.reshape(G * bk.n, D))
            dks_rd.index_copy_(0, kr, dk.reshape(G * m, D))  # groups are distinct (bh, chunk)
            dvs_rd.index_copy_(0, kr, dv.reshape(G * m, D))
        for bh, c, rows_n in groups.pieces:
            dq, dk, dv = routed_piece_bwd(do_rd[rows_n], q_rd[rows_n], ks_rd.view(BH, L, D)[bh],
                                           vs_rd.view(BH, L, D)[bh], o_rd[rows_n], lse_r1[rows_n], plan, idx, c,
                                           rows_n, L, scale)
            dqs.append(dq)
            sl = slice(bh * L + idx.offsets[c], bh * L + idx.offsets[c + 1])
            dks_rd[sl] += dk
            dvs_rd[sl] += dv
        dq_ed = torch.cat(dqs + [zero])
        dq_rd = dq_bld.view(BH * L, D)
        K = groups.inv_rk.shape[1]
        for r0, r1 in _bands(BH * L, K, D):
            dq_rd[r0:r1] += dq_ed.index_select(0, groups.inv_rk[r0:r1].flatten()).view(-1, K, D).sum(1)
        add_unsorted(dk_bld, dks_rd, idx)
        add_unsorted(dv_bld, dvs_rd, idx)
    shape = q_bhld.shape
    return dq_bld.view(shape), dk_bld.view(shape), dv_bld.view(shape)


# ----------------------------------------------------------------------------- entry point
@dataclass(frozen=True, eq=False)
class GatherState:
    """Built by :func:`prepare_gather` (timed with routing): layout index + routed groups."""

    index: GatherIndex
    groups: RoutedGroups


def prepare_gather(plan) -> GatherState:
    """Index building for ``plan``: cached layout index and the (bh, chunk) query groups."""
    idx = gather_index(plan.layout, plan.structure)
    C = plan.structure.num_chunks
    if plan.selected.shape[-1]:
        groups = routed_groups(plan.selected.cpu(), idx, C)
    else:
        groups = RoutedGroups((), (), 0, torch.empty(0, 0, dtype=torch.int64))
    return GatherState(idx, groups)


def gather_kernel(q, k, v, plan, state: GatherState, scale: float) -> torch.Tensor:
    """The impl's entry under :func:`mocbench.backends.moc.impl.run_impl` (plan checked, scale resolved)."""
    return apply_in_compute_dtype(_MoCGatherFn, q, k, v, plan, state, scale)[0]


# ----------------------------------------------------------------------------- working set (no tensors)
def _padded_slots(s: MoCSizes) -> int:
    """P: routed pairs laid out in padded buckets (<= 1.5x, ``_BUCKET_SLACK``) plus partly anchored pieces."""
    return (3 * s.pairs) // 2 + (s.pairs if s.partial_chunks else 0)


def gather_workspace_bytes(s: MoCSizes) -> int:
    """impl ``gather``: the layout index and the routed groups (built, then kept in the plan); the
    anchor partials' output and LSE (kept for backward) plus the larger of the anchor and the routed
    phase: padded query rows, keys and values of one bucket while the earlier buckets' outputs
    accumulate, then the outputs before and after concatenation, and the merge bands; backward: dq,
    dk, dv plus the larger of the anchor buckets' and the routed buckets' gradients."""
    D, f, P = s.head_dim, s.f, _padded_slots(s)
    rows_d = s.rows * D * f
    kv_sorted = 2 * rows_d if s.reordered else 0
    built, kept = routed_groups_bytes(s)
    slab = 2 * min(s.pairs * D * f, _SLAB_BYTES * f // 4)  # a band's gathered partials and their weights
    pieces = partial_piece_bytes(s)
    routed_fwd = rows_d + kv_sorted + max(2 * P * D * f + 2 * rows_d, 2 * P * (D + 1) * f) + slab + pieces
    forward = max(anchor_forward_bytes(s), routed_fwd if s.slots else 0)
    if s.requires_grad:  # concatenated q, dout, out; chunk-sorted dk, dv; a bucket's gathers and outputs
        routed_bwd = 3 * rows_d + kv_sorted + 2 * rows_d + max(4 * P * D * f + 4 * rows_d, 2 * P * D * f) \
            + slab + pieces
        forward = max(forward, 3 * rows_d + max(anchor_backward_bytes(s), routed_bwd if s.slots else 0))
    saved = rows_d + s.rows * f
    return (cpu_cast_bytes(s) + gather_index_bytes(s) + KERNEL_SCRATCH_BYTES + kept
            + max(built, saved + forward))
