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
m keys of a chunk, E routed (query, chunk) pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mocbench.backends.moc.structure import AnchorStructure

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
_flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default
# Above this many booleans the (BH, C+1, L) routed-membership map is replaced by a sort.
_HOT_MAP_MAX = 1 << 27


# ----------------------------------------------------------------------------- layout index
@dataclass(frozen=True, eq=False)
class AnchorBucket:
    """Anchor groups of identical shape: queries ``q_idx_gn`` attend keys ``k_idx_gk``."""

    q_idx_gn: torch.Tensor  # (G, n) token positions of each group's queries
    k_idx_gk: torch.Tensor  # (G, nk) token positions of each group's anchor keys


@dataclass(frozen=True, eq=False)
class GatherIndex:
    """Everything the gather implementation needs that depends on the layout only (cached)."""

    buckets: tuple[AnchorBucket, ...]
    token_index_l: torch.Tensor  # (L,) positions sorted by chunk (chunk c = offsets[c]:offsets[c+1])
    offsets: tuple[int, ...]  # (C+1,) as Python ints
    partial_c: tuple[bool, ...]  # chunk is partly anchored for some query class
    token_class_l: torch.Tensor  # (L,) query class of every token
    shot_id_l: torch.Tensor  # (L,) shot of every token


def _anchor_groups(structure: AnchorStructure, shot_id_l: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    ct = structure.chunks
    text_l = ct.is_text[ct.chunk_id]
    text_idx = text_l.nonzero().flatten()
    groups = []
    if structure.local_anchor == "shot":
        for s in range(int(shot_id_l.max()) + 1):
            own = (shot_id_l == s).nonzero().flatten()
            keys = own
            if structure.text_anchor:  # captions of other shots (own caption is already in `own`)
                keys = torch.cat([own, text_idx[shot_id_l[text_idx] != s]])
            groups.append((own, keys))
    else:
        for c in range(ct.num_chunks):
            own = ct.token_index[int(ct.offsets[c]):int(ct.offsets[c + 1])]
            if not structure.text_anchor:
                keys = own
            elif bool(ct.is_text[c]):
                keys = text_idx  # a caption chunk is itself part of the text anchor
            else:
                keys = torch.cat([own, text_idx])
            groups.append((own, keys))
    return groups


def gather_index(layout, structure: AnchorStructure) -> GatherIndex:
    key = ("moc_gather_index", structure.chunks.rule, structure.text_anchor, structure.local_anchor)
    cache = layout._cache
    if key in cache:
        return cache[key]
    by_shape: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for own, keys in _anchor_groups(structure, layout.shot_id):
        by_shape.setdefault((own.numel(), keys.numel()), []).append((own, keys))
    buckets = tuple(AnchorBucket(torch.stack([g[0] for g in gs]), torch.stack([g[1] for g in gs]))
                    for gs in by_shape.values())
    ct = structure.chunks
    unc = structure.uncovered
    partial = ((unc > 0) & (unc < ct.sizes[None, :])).any(0)
    out = GatherIndex(buckets, ct.token_index, tuple(int(x) for x in ct.offsets), tuple(partial.tolist()),
                      structure.token_class, layout.shot_id)
    cache[key] = out
    return out


# ----------------------------------------------------------------------------- routed groups
def routed_groups(selected_bhlk: torch.Tensor, num_chunks: int) -> tuple[torch.Tensor, list[int]]:
    """Queries of every (bh, chunk) group, sorted by (bh, chunk, query).

    Returns ``rows_e`` (E,) query positions within their (b, h) and ``bounds`` (BH*C+1,) Python
    offsets: group g = bh*C + c is ``rows_e[bounds[g]:bounds[g+1]]``. Duplicates and -1 are dropped.
    """
    B, H, L, K = selected_bhlk.shape
    BH, C = B * H, num_chunks
    sel = selected_bhlk.reshape(BH, L, K)
    if BH * (C + 1) * L <= _HOT_MAP_MAX:
        hot_bcl = torch.zeros(BH, C + 1, L, dtype=torch.bool)
        hot_bcl.scatter_(1, torch.where(sel < 0, C, sel).transpose(1, 2), True)
        hot_bcl = hot_bcl[:, :C]
        counts_g = hot_bcl.sum(-1, dtype=torch.int64).flatten()
        rows_e = hot_bcl.flatten().nonzero().flatten() % L
    else:  # long streams: sort (bh, c, i) keys instead of materialising the map
        bh_l = torch.arange(BH).view(BH, 1, 1)
        i_l = torch.arange(L).view(1, L, 1)
        key_e = ((bh_l * C + sel) * L + i_l).flatten()
        key_e = torch.unique(key_e[sel.flatten() >= 0])  # sorted, duplicates removed
        counts_g = torch.bincount(key_e // L, minlength=BH * C)
        rows_e = key_e % L
    bounds = [0] + torch.cumsum(counts_g, 0).tolist()
    return rows_e, bounds


def _partial_mask(idx: GatherIndex, structure: AnchorStructure, c: int, rows_n: torch.Tensor, dtype):
    """For a partly anchored chunk c: keep rows that route to some un-anchored key, and the
    additive mask (1, 1, n, m) with -inf on the keys that are already anchors of each row."""
    ct = structure.chunks
    keys_m = idx.token_index_l[idx.offsets[c]:idx.offsets[c + 1]]
    cls_n = idx.token_class_l[rows_n]
    anchored_nm = torch.zeros(rows_n.numel(), keys_m.numel(), dtype=torch.bool)
    if structure.text_anchor:
        anchored_nm |= ct.is_text[ct.chunk_id[keys_m]][None, :]
    if structure.local_anchor == "shot":
        anchored_nm |= idx.shot_id_l[keys_m][None, :] == structure.class_shot[cls_n][:, None]
    else:
        anchored_nm |= (ct.chunk_id[keys_m][None, :] == structure.class_chunk[cls_n][:, None])
    keep_n = ~anchored_nm.all(1)
    mask = torch.zeros(anchored_nm.shape, dtype=dtype).masked_fill_(anchored_nm, float("-inf"))
    return keep_n, mask[keep_n][None, None]


# ----------------------------------------------------------------------------- autograd
def _blocks(q_bld, k_bld, v_bld, plan, idx: GatherIndex, rows_e, bounds):
    """Yield every routed partial as (bh, rows_n, kc_md, vc_md, mask or None)."""
    structure = plan.structure
    BH = q_bld.shape[0]
    C = structure.num_chunks
    for bh in range(BH):
        base = bh * C
        for c in range(C):
            lo, hi = bounds[base + c], bounds[base + c + 1]
            if lo == hi:
                continue
            rows_n = rows_e[lo:hi]
            mask = None
            if idx.partial_c[c]:
                keep_n, mask = _partial_mask(idx, structure, c, rows_n, q_bld.dtype)
                rows_n = rows_n[keep_n]
                if rows_n.numel() == 0:
                    continue
            yield bh, rows_n, idx.offsets[c], idx.offsets[c + 1], mask


class _MoCGatherFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_bhld, k_bhld, v_bhld, plan, state, scale):
        B, H, L, D = q_bhld.shape
        BH = B * H
        idx, (rows_e, bounds) = state.index, state.groups
        q_bld, k_bld, v_bld = (t.reshape(BH, L, D) for t in (q_bhld, k_bhld, v_bhld))
        out_bld = torch.empty(BH, L, D, dtype=q_bhld.dtype)
        lse_bl = torch.empty(BH, L, dtype=q_bhld.dtype)
        # 1. anchors: one stacked flash call per bucket of equal-shaped groups
        for bucket in idx.buckets:
            G, n = bucket.q_idx_gn.shape
            qi = bucket.q_idx_gn.flatten()
            o_bgnd, lse_bgn = _flash(q_bld[:, bucket.q_idx_gn], k_bld[:, bucket.k_idx_gk],
                                     v_bld[:, bucket.k_idx_gk], scale=scale)
            out_bld[:, qi] = o_bgnd.reshape(BH, G * n, D)
            lse_bl[:, qi] = lse_bgn.reshape(BH, G * n).to(lse_bl.dtype)
        # 2. routed chunks: per (bh, chunk) flash call, merged in place by log-sum-exp
        ks_bld = vs_bld = None
        if bounds[-1]:
            ks_bld = k_bld[:, idx.token_index_l]
            vs_bld = v_bld[:, idx.token_index_l]
            for bh, rows_n, lo, hi, mask in _blocks(q_bld, k_bld, v_bld, plan, idx, rows_e, bounds):
                q_nd = q_bld[bh].index_select(0, rows_n)
                o_11nd, lse_11n = _flash(q_nd[None, None], ks_bld[bh, lo:hi][None, None],
                                         vs_bld[bh, lo:hi][None, None], attn_mask=mask, scale=scale)
                lse_n = lse_11n.view(-1).to(lse_bl.dtype)
                old_n = lse_bl[bh].index_select(0, rows_n)
                new_n = torch.logaddexp(old_n, lse_n)
                a_n1 = (old_n - new_n).exp_().unsqueeze(1)
                b_n1 = (lse_n - new_n).exp_().unsqueeze(1)
                acc_nd = out_bld[bh].index_select(0, rows_n).mul_(a_n1).addcmul_(o_11nd.view(-1, D), b_n1)
                out_bld[bh].index_copy_(0, rows_n, acc_nd)
                lse_bl[bh].index_copy_(0, rows_n, new_n)
        ctx.plan, ctx.state, ctx.scale = plan, state, scale
        ctx.save_for_backward(q_bhld, k_bhld, v_bhld, out_bld, lse_bl)
        ctx.mark_non_differentiable(lse_bl)
        return out_bld.view(B, H, L, D), lse_bl.view(B, H, L)

    @staticmethod
    def backward(ctx, dout_bhld, _dlse):
        q_bhld, k_bhld, v_bhld, out_bld, lse_bl = ctx.saved_tensors
        plan, state, scale = ctx.plan, ctx.state, ctx.scale
        idx, (rows_e, bounds) = state.index, state.groups
        B, H, L, D = q_bhld.shape
        BH = B * H
        q_bld, k_bld, v_bld = (t.reshape(BH, L, D) for t in (q_bhld, k_bhld, v_bhld))
        do_bld = dout_bhld.reshape(BH, L, D).contiguous()
        dq_bld = torch.zeros_like(q_bld)
        dk_bld = torch.zeros_like(k_bld)
        dv_bld = torch.zeros_like(v_bld)
        for bucket in idx.buckets:
            G, n = bucket.q_idx_gn.shape
            qi, ki = bucket.q_idx_gn, bucket.k_idx_gk
            dq, dk, dv = _flash_bwd(do_bld[:, qi], q_bld[:, qi], k_bld[:, ki], v_bld[:, ki],
                                    out_bld[:, qi], lse_bl[:, qi], 0.0, False, scale=scale)
            dq_bld.index_add_(1, qi.flatten(), dq.reshape(BH, -1, D))
            dk_bld.index_add_(1, ki.flatten(), dk.reshape(BH, -1, D))
            dv_bld.index_add_(1, ki.flatten(), dv.reshape(BH, -1, D))
        if bounds[-1]:
            ks_bld = k_bld[:, idx.token_index_l]
            vs_bld = v_bld[:, idx.token_index_l]
            dks_bld = torch.zeros_like(ks_bld)
            dvs_bld = torch.zeros_like(vs_bld)
            for bh, rows_n, lo, hi, mask in _blocks(q_bld, k_bld, v_bld, plan, idx, rows_e, bounds):
                sel = lambda t: t[bh].index_select(0, rows_n)[None, None]  # noqa: E731
                dq, dk, dv = _flash_bwd(sel(do_bld), sel(q_bld), ks_bld[bh, lo:hi][None, None],
                                        vs_bld[bh, lo:hi][None, None], sel(out_bld),
                                        lse_bl[bh].index_select(0, rows_n)[None, None], 0.0, False,
                                        attn_mask=mask, scale=scale)
                dq_bld[bh].index_add_(0, rows_n, dq.view(-1, D))
                dks_bld[bh, lo:hi] += dk.view(-1, D)
                dvs_bld[bh, lo:hi] += dv.view(-1, D)
            dk_bld.index_add_(1, idx.token_index_l, dks_bld)
            dv_bld.index_add_(1, idx.token_index_l, dvs_bld)
        shape = q_bhld.shape
        return dq_bld.view(shape), dk_bld.view(shape), dv_bld.view(shape), None, None, None


# ----------------------------------------------------------------------------- entry point
@dataclass(frozen=True, eq=False)
class GatherState:
    """Built by :func:`prepare_gather` (timed with routing): layout index + routed groups."""

    index: GatherIndex
    groups: tuple[torch.Tensor, list[int]]  # (rows_e, bounds) of :func:`routed_groups`


def prepare_gather(plan) -> GatherState:
    """Index building for ``plan``: cached layout index and the (bh, chunk) query groups."""
    idx = gather_index(plan.layout, plan.structure)
    BH, C = plan.batch * plan.heads, plan.structure.num_chunks
    if plan.selected.shape[-1]:
        groups = routed_groups(plan.selected.cpu(), C)
    else:
        groups = (torch.empty(0, dtype=torch.int64), [0] * (BH * C + 1))
    return GatherState(idx, groups)


def gather_forward_lse(q, k, v, plan) -> tuple[torch.Tensor, torch.Tensor]:
    """MoC output (B, H, L, D) and its log-sum-exp (B, H, L) (natural log, in the compute dtype).

    Uses ``plan.impl_state`` when the plan was prepared for this implementation; any other MoC
    plan (e.g. one prepared for ``"reference"``) is indexed here, on the fly.
    """
    if q.device.type != "cpu":
        raise ValueError(f"moc impl 'gather' runs on CPU, got {q.device}")
    state = plan.impl_state if isinstance(getattr(plan, "impl_state", None), GatherState) else prepare_gather(plan)
    dt = q.dtype if q.dtype in (torch.float32, torch.float64) else torch.float32
    scale = plan.scale if plan.scale is not None else 1.0 / math.sqrt(q.shape[-1])
    q_, k_, v_ = (t.to(dt).contiguous() for t in (q, k, v))
    out, lse = _MoCGatherFn.apply(q_, k_, v_, plan, state, scale)
    return out.to(q.dtype), lse


def gather_forward(q, k, v, plan) -> torch.Tensor:
    return gather_forward_lse(q, k, v, plan)[0]
