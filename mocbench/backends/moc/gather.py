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
# The final merge runs over bands of rows whose gathered partials take about this many bytes.
_SLAB_BYTES = 64 << 20
# Routed groups are batched into one flash call per bucket: same chunk size, query counts within
# this factor of the bucket's largest (padding waste <= 1 - 1/_BUCKET_SLACK).
_BUCKET_SLACK = 1.5
_BUCKET_MAX_GROUPS = 4096


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
    identity_order: bool  # chunks are contiguous and in stream order (token_index is arange)


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
                      structure.token_class, layout.shot_id,
                      bool((ct.token_index == torch.arange(layout.num_tokens)).all()))
    cache[key] = out
    return out


# ----------------------------------------------------------------------------- routed groups
@dataclass(frozen=True, eq=False)
class RoutedBucket:
    """Routed groups of one chunk size, padded to ``n`` queries: one batched flash call."""

    n: int
    q_rows_p: torch.Tensor  # (G*n,) query row (bh*L + i) of every padded slot; BH*L = zero row
    k_rows_gm: torch.Tensor  # (G, m) rows of the chunk-sorted keys (bh*L + position) of each group


@dataclass(frozen=True, eq=False)
class RoutedGroups:
    """Routed (query, chunk) pairs grouped by (bh, chunk), laid out in a padded buffer of P rows.

    Groups of wholly un-anchored chunks are batched in ``buckets`` (equal chunk size, similar
    query counts, padded); groups of partly anchored chunks are ``pieces`` ``(bh, c, rows_n)``
    computed one by one with a mask, placed after the buckets. ``inv_rk[r, k]`` is the buffer
    position of row r's k-th routed pair (P: none).
    """

    buckets: tuple[RoutedBucket, ...]
    pieces: tuple[tuple[int, int, torch.Tensor], ...]
    num_slots: int  # P
    inv_rk: torch.Tensor  # (BH*L, K)


def routed_groups(selected_bhlk: torch.Tensor, idx: "GatherIndex", num_chunks: int) -> RoutedGroups:
    """Group the routing ``selected`` (B, H, L, K) by (bh, chunk); duplicates and -1 are dropped."""
    B, H, L, K = selected_bhlk.shape
    BH, C = B * H, num_chunks
    sel = selected_bhlk.reshape(BH, L, K)
    if BH * (C + 1) * L <= _HOT_MAP_MAX:  # membership map (BH, C+1, L); row C collects the -1 slots
        hot_bcl = torch.zeros(BH, C + 1, L, dtype=torch.bool)
        hot_bcl.scatter_(1, torch.where(sel < 0, C, sel).transpose(1, 2), True)
        hot_bcl[:, C] = False
        counts_g = hot_bcl[:, :C].sum(-1, dtype=torch.int64).flatten()
        flat_e = hot_bcl.view(-1).nonzero().squeeze(1)
        rows_e = flat_e // ((C + 1) * L) * L + flat_e % L
        rank_e = torch.cumsum(hot_bcl, 1, dtype=torch.int32).view(-1)[flat_e] - 1  # slot within its row
    else:  # long streams: sort (bh, c, i, slot) keys instead of materialising the map
        bh_l = torch.arange(BH).view(BH, 1, 1)
        i_l = torch.arange(L).view(1, L, 1)
        key_e = ((((bh_l * C + sel) * L + i_l) * K) + torch.arange(K)).flatten()
        key_e = torch.sort(key_e[sel.flatten() >= 0]).values
        first = torch.ones_like(key_e, dtype=torch.bool)
        first[1:] = key_e[1:] // K != key_e[:-1] // K  # drop duplicate (bh, c, i)
        key_e, rank_e = key_e[first] // K, key_e[first] % K
        counts_g = torch.bincount(key_e // L, minlength=BH * C)
        rows_e = key_e // (C * L) * L + key_e % L
    bounds = [0] + torch.cumsum(counts_g, 0).tolist()
    # Bucket the groups: same chunk size, query counts within _BUCKET_SLACK of the bucket's largest.
    full, partial = [], []
    for g in range(BH * C):
        if bounds[g + 1] > bounds[g]:
            (partial if idx.partial_c[g % C] else full).append((bounds[g + 1] - bounds[g], g))
    full.sort(key=lambda t: (idx.offsets[t[1] % C + 1] - idx.offsets[t[1] % C], t[0]), reverse=True)
    pos_parts, buckets, base, j = [], [], 0, 0
    arange_m = {}
    while j < len(full):
        n_b, g0 = full[j]
        m = idx.offsets[g0 % C + 1] - idx.offsets[g0 % C]
        members = []
        while j < len(full) and full[j][0] * _BUCKET_SLACK >= n_b and len(members) < _BUCKET_MAX_GROUPS \
                and idx.offsets[full[j][1] % C + 1] - idx.offsets[full[j][1] % C] == m:
            members.append(full[j][1])
            j += 1
        slot_rows = torch.full((len(members), n_b), BH * L, dtype=torch.int64)
        for gi, g in enumerate(members):
            lo, hi = bounds[g], bounds[g + 1]
            slot_rows[gi, :hi - lo] = rows_e[lo:hi]
            pos_parts.append((lo, hi, base + gi * n_b))
        if m not in arange_m:
            arange_m[m] = torch.arange(m)
        starts = torch.tensor([g // C * L + idx.offsets[g % C] for g in members])
        buckets.append(RoutedBucket(n_b, slot_rows.flatten(), starts[:, None] + arange_m[m]))
        base += len(members) * n_b
    pieces = []
    for n, g in partial:
        lo, hi = bounds[g], bounds[g + 1]
        pieces.append((g // C, g % C, rows_e[lo:hi]))
        pos_parts.append((lo, hi, base))
        base += n
    E = rows_e.numel()
    pos_e = torch.empty(E, dtype=torch.int64)
    for lo, hi, start in pos_parts:
        pos_e[lo:hi] = torch.arange(start, start + hi - lo)
    inv_rk = torch.full((BH * L * K,), base, dtype=torch.int64)
    inv_rk[rows_e * K + rank_e] = pos_e
    return RoutedGroups(tuple(buckets), tuple(pieces), base, inv_rk.view(BH * L, K))


def _partial_mask(idx: GatherIndex, structure: AnchorStructure, c: int, rows_n: torch.Tensor, L: int, dtype):
    """For a partly anchored chunk c: rows that route to some un-anchored key, and the additive
    mask (1, 1, n_keep, m) with -inf on the keys of c that are already anchors of each row."""
    ct = structure.chunks
    keys_m = idx.token_index_l[idx.offsets[c]:idx.offsets[c + 1]]
    cls_n = idx.token_class_l[rows_n % L]
    anchored_nm = torch.zeros(rows_n.numel(), keys_m.numel(), dtype=torch.bool)
    if structure.text_anchor:
        anchored_nm |= ct.is_text[ct.chunk_id[keys_m]][None, :]
    if structure.local_anchor == "shot":
        anchored_nm |= idx.shot_id_l[keys_m][None, :] == structure.class_shot[cls_n][:, None]
    else:
        anchored_nm |= ct.chunk_id[keys_m][None, :] == structure.class_chunk[cls_n][:, None]
    keep_n = ~anchored_nm.all(1)
    mask = torch.zeros(anchored_nm.shape, dtype=dtype).masked_fill_(anchored_nm, float("-inf"))
    return keep_n, mask[keep_n][None, None]


def _bands(n_rows: int, K: int, D: int):
    step = max(1, _SLAB_BYTES // (4 * K * D))
    return [(r0, min(n_rows, r0 + step)) for r0 in range(0, n_rows, step)]


def _sorted_kv(t_bld: torch.Tensor, idx: GatherIndex) -> torch.Tensor:
    return t_bld if idx.identity_order else t_bld[:, idx.token_index_l]


# ----------------------------------------------------------------------------- autograd
class _MoCGatherFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_bhld, k_bhld, v_bhld, plan, state, scale):
        B, H, L, D = q_bhld.shape
        BH = B * H
        idx, groups = state.index, state.groups
        q_bld, k_bld, v_bld = (t.reshape(BH, L, D) for t in (q_bhld, k_bhld, v_bhld))
        num_rd = torch.empty(BH * L, D, dtype=q_bhld.dtype)  # running numerator, rows bh*L + i
        m_r = torch.empty(BH * L, dtype=q_bhld.dtype)  # running log-sum-exp reference
        num_bld, m_bl = num_rd.view(BH, L, D), m_r.view(BH, L)
        # 1. anchors: one stacked flash call per bucket of equal-shaped groups
        for bucket in idx.buckets:
            G, n = bucket.q_idx_gn.shape
            qi = bucket.q_idx_gn.flatten()
            o_bgnd, lse_bgn = _flash(q_bld[:, bucket.q_idx_gn], k_bld[:, bucket.k_idx_gk],
                                     v_bld[:, bucket.k_idx_gk], scale=scale)
            num_bld[:, qi] = o_bgnd.reshape(BH, G * n, D)
            m_bl[:, qi] = lse_bgn.reshape(BH, G * n).to(m_r.dtype)
        # 2. routed chunks: one batched flash call per bucket of (bh, chunk) groups
        if groups.num_slots:
            q_rd = torch.cat([q_bld.reshape(BH * L, D), q_bld.new_zeros(1, D)])  # row BH*L: padding
            ks_rd, vs_rd = (_sorted_kv(t, idx).reshape(BH * L, D) for t in (k_bld, v_bld))
            outs, lses = [], []
            for bk in groups.buckets:
                G, m = bk.k_rows_gm.shape
                o, lse = _flash(q_rd.index_select(0, bk.q_rows_p).view(G, 1, bk.n, D),
                                ks_rd.index_select(0, bk.k_rows_gm.flatten()).view(G, 1, m, D),
                                vs_rd.index_select(0, bk.k_rows_gm.flatten()).view(G, 1, m, D), scale=scale)
                outs.append(o.reshape(G * bk.n, D))
                lses.append(lse.reshape(G * bk.n).to(m_r.dtype))
            for bh, c, rows_n in groups.pieces:
                o, lse = _routed_piece(q_rd.index_select(0, rows_n), ks_rd.view(BH, L, D)[bh], vs_rd.view(BH, L, D)[bh],
                                       plan, idx, c, rows_n, L, scale)
                outs.append(o)
                lses.append(lse.to(m_r.dtype))
            o_ed = torch.cat(outs + [q_rd.new_zeros(1, D)])  # row P: "no pair"
            lse_e = torch.cat(lses + [m_r.new_full((1,), float("-inf"))])
            # 3. exact merge, band by band of rows: anchor partial + the K routed partials per row
            K = groups.inv_rk.shape[1]
            for r0, r1 in _bands(BH * L, K, D):
                inv_nk = groups.inv_rk[r0:r1]
                l_nk = lse_e[inv_nk]
                lse_n = torch.logaddexp(m_r[r0:r1], torch.logsumexp(l_nk, 1))
                w_n1k = (l_nk - lse_n[:, None]).exp_().unsqueeze(1)
                o_nkd = o_ed.index_select(0, inv_nk.flatten()).view(-1, K, D)
                wa_n1 = (m_r[r0:r1] - lse_n).exp_().unsqueeze(1)
                num_rd[r0:r1].mul_(wa_n1).unsqueeze(1).baddbmm_(w_n1k, o_nkd)
                m_r[r0:r1] = lse_n
        out_rd, lse_r = num_rd, m_r
        ctx.plan, ctx.state, ctx.scale = plan, state, scale
        ctx.save_for_backward(q_bhld, k_bhld, v_bhld, out_rd, lse_r)
        ctx.mark_non_differentiable(lse_r)
        return out_rd.view(B, H, L, D), lse_r.view(B, H, L)

    @staticmethod
    def backward(ctx, dout_bhld, _dlse):
        q_bhld, k_bhld, v_bhld, out_rd, lse_r = ctx.saved_tensors
        plan, state, scale = ctx.plan, ctx.state, ctx.scale
        idx, groups = state.index, state.groups
        B, H, L, D = q_bhld.shape
        BH = B * H
        q_bld, k_bld, v_bld = (t.reshape(BH, L, D) for t in (q_bhld, k_bhld, v_bhld))
        do_bld = dout_bhld.reshape(BH, L, D).contiguous()
        out_bld, lse_bl = out_rd.view(BH, L, D), lse_r.view(BH, L)
        dq_bld, dk_bld, dv_bld = (torch.zeros_like(t) for t in (q_bld, k_bld, v_bld))
        for bucket in idx.buckets:
            qi, ki = bucket.q_idx_gn, bucket.k_idx_gk
            dq, dk, dv = _flash_bwd(do_bld[:, qi], q_bld[:, qi], k_bld[:, ki], v_bld[:, ki],
                                    out_bld[:, qi], lse_bl[:, qi], 0.0, False, scale=scale)
            dq_bld.index_add_(1, qi.flatten(), dq.reshape(BH, -1, D))
            dk_bld.index_add_(1, ki.flatten(), dk.reshape(BH, -1, D))
            dv_bld.index_add_(1, ki.flatten(), dv.reshape(BH, -1, D))
        if groups.num_slots:
            zero = q_bld.new_zeros(1, D)
            ext = lambda t: torch.cat([t.reshape(BH * L, D), zero])  # noqa: E731
            q_rd, do_rd, o_rd = ext(q_bld), ext(do_bld), ext(out_bld)
            lse_r1 = torch.cat([lse_r, lse_r.new_zeros(1)])
            ks_rd, vs_rd = (_sorted_kv(t, idx).reshape(BH * L, D) for t in (k_bld, v_bld))
            dks_rd, dvs_rd = torch.zeros_like(ks_rd), torch.zeros_like(vs_rd)
            dqs = []
            for bk in groups.buckets:
                G, m = bk.k_rows_gm.shape
                kr = bk.k_rows_gm.flatten()
                g4 = lambda t, r, n: t.index_select(0, r).view(G, 1, n, -1)  # noqa: E731
                dq, dk, dv = _flash_bwd(g4(do_rd, bk.q_rows_p, bk.n), g4(q_rd, bk.q_rows_p, bk.n),
                                        g4(ks_rd, kr, m), g4(vs_rd, kr, m), g4(o_rd, bk.q_rows_p, bk.n),
                                        lse_r1.index_select(0, bk.q_rows_p).view(G, 1, bk.n), 0.0, False, scale=scale)
                dqs.append(dq.reshape(G * bk.n, D))
                dks_rd.index_copy_(0, kr, dk.reshape(G * m, D))  # groups are distinct (bh, chunk)
                dvs_rd.index_copy_(0, kr, dv.reshape(G * m, D))
            for bh, c, rows_n in groups.pieces:
                dq, dk, dv = _routed_piece_bwd(do_rd[rows_n], q_rd[rows_n], ks_rd.view(BH, L, D)[bh],
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
            dks_bld, dvs_bld = dks_rd.view(BH, L, D), dvs_rd.view(BH, L, D)
            if idx.identity_order:
                dk_bld += dks_bld
                dv_bld += dvs_bld
            else:
                dk_bld.index_add_(1, idx.token_index_l, dks_bld)
                dv_bld.index_add_(1, idx.token_index_l, dvs_bld)
        shape = q_bhld.shape
        return dq_bld.view(shape), dk_bld.view(shape), dv_bld.view(shape), None, None, None


def _routed_piece(q_nd, ks_ld, vs_ld, plan, idx, c, rows_n, L, scale):
    """Queries ``q_nd`` attend the keys of chunk c: (out (n, D), lse (n,)); -inf lse for a row with
    no un-anchored key in c (never produced by route())."""
    k_md, v_md = ks_ld[idx.offsets[c]:idx.offsets[c + 1]], vs_ld[idx.offsets[c]:idx.offsets[c + 1]]
    n, D = q_nd.shape
    if not idx.partial_c[c]:
        o, lse = _flash(q_nd[None, None], k_md[None, None], v_md[None, None], scale=scale)
        return o.view(n, D), lse.view(n)
    keep_n, mask = _partial_mask(idx, plan.structure, c, rows_n, L, q_nd.dtype)
    o_nd = q_nd.new_zeros(n, D)
    lse_n = q_nd.new_full((n,), float("-inf"))
    if bool(keep_n.any()):
        o, lse = _flash(q_nd[keep_n][None, None], k_md[None, None], v_md[None, None], attn_mask=mask, scale=scale)
        o_nd[keep_n] = o.view(-1, D)
        lse_n[keep_n] = lse.view(-1).to(lse_n.dtype)
    return o_nd, lse_n


def _routed_piece_bwd(do_nd, q_nd, ks_ld, vs_ld, o_nd, lse_n1, plan, idx, c, rows_n, L, scale):
    """This piece's share of (dq (n, D), dk (m, D), dv (m, D)) given the final out and lse."""
    k_md, v_md = ks_ld[idx.offsets[c]:idx.offsets[c + 1]], vs_ld[idx.offsets[c]:idx.offsets[c + 1]]
    n, D = q_nd.shape
    e = lambda t: t[None, None]  # noqa: E731
    if not idx.partial_c[c]:
        dq, dk, dv = _flash_bwd(e(do_nd), e(q_nd), e(k_md), e(v_md), e(o_nd), e(lse_n1.view(n)), 0.0, False,
                                scale=scale)
        return dq.view(n, D), dk.view(-1, D), dv.view(-1, D)
    keep_n, mask = _partial_mask(idx, plan.structure, c, rows_n, L, q_nd.dtype)
    dq_nd = torch.zeros_like(q_nd)
    if not bool(keep_n.any()):
        return dq_nd, torch.zeros_like(k_md), torch.zeros_like(v_md)
    kp = lambda t: e(t[keep_n].contiguous())  # noqa: E731
    dq, dk, dv = _flash_bwd(kp(do_nd), kp(q_nd), e(k_md), e(v_md), kp(o_nd), kp(lse_n1.view(n)), 0.0, False,
                            attn_mask=mask, scale=scale)
    dq_nd[keep_n] = dq.view(-1, D)
    return dq_nd, dk.view(-1, D), dv.view(-1, D)


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
