"""Partial attentions over disjoint key sets and their exact log-sum-exp merge (shared by the CPU impls).

MoC attention of query i over ``A(i) = anchors(i) U routed keys(i)`` (moc-spec §5) is computed as
partials over disjoint key sets, each giving an output and its log-sum-exp (LSE), merged exactly:
``lse = logaddexp(lse_1, lse_2)``, ``out = out_1 * exp(lse_1 - lse) + out_2 * exp(lse_2 - lse)``.
Backward calls flash attention's backward once per partial with the *final* output and LSE, which
gives exactly that partial's share of dq, dk, dv (the flash / ring-attention decomposition).

* :func:`anchor_forward` / :func:`anchor_backward`: the anchor partial of every query, one stacked
  flash call per bucket of equal-shaped anchor groups (a shot or a chunk, plus every caption token).
* :func:`routed_piece` / :func:`routed_piece_bwd`: queries attending one routed chunk, with a key
  mask when the chunk is partly anchored for them (``fixed:m`` chunks spanning two shots).
* :func:`merge_partial`: folds a partial into running rows; :func:`merge_scattered`: the same merge for
  every row at once, from one partial per row plus any number of packed partials naming their row
  (impl ``varlen``); :func:`sorted_kv` / :func:`add_unsorted`:
  keys in chunk-sorted order and gradients back; :func:`apply_in_compute_dtype`: the dtype policy.
* ``*_bytes``: upper bounds of what these allocate (memory checks; no tensors).

Legend: BH = batch*heads, L tokens, D head_dim; ``_rd`` rows (bh*L + i, D), ``_r`` one value per row,
``_bld`` (BH, L, D), ``_nd`` n gathered rows.
"""

from __future__ import annotations

import torch

from mocbench.backends.moc.gather_index import GatherIndex, partial_mask
from mocbench.backends.moc.sizes import MoCSizes

flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default


def sorted_kv(t_bld: torch.Tensor, idx: GatherIndex) -> torch.Tensor:
    """Keys or values (BH, L, D) in chunk-sorted row order (each chunk a contiguous slice)."""
    return t_bld if idx.identity_order else t_bld[:, idx.token_index_l]


def add_unsorted(t_bld: torch.Tensor, sorted_rd: torch.Tensor, idx: GatherIndex) -> None:
    """t (BH, L, D) += a gradient held in chunk-sorted row order (the inverse of :func:`sorted_kv`)."""
    sorted_bld = sorted_rd.view(t_bld.shape)
    if idx.identity_order:
        t_bld += sorted_bld
    else:
        t_bld.index_add_(1, idx.token_index_l, sorted_bld)


def anchor_forward(q_bld, k_bld, v_bld, idx: GatherIndex, scale: float, *, buckets=None,
                   out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor partials: (output (BH*L, D), log-sum-exp (BH*L,)), rows bh*L + i; one stacked flash
    call per bucket of equal-shaped anchor groups (``buckets``: a subset; ``out``: buffers to fill)."""
    BH, L, D = q_bld.shape
    out_rd, lse_r = out if out is not None else (torch.empty(BH * L, D, dtype=q_bld.dtype),
                                                 torch.empty(BH * L, dtype=q_bld.dtype))
    out_bld, lse_bl = out_rd.view(BH, L, D), lse_r.view(BH, L)
    for bucket in idx.buckets if buckets is None else buckets:
        G, n = bucket.q_idx_gn.shape
        qi = bucket.q_idx_gn.flatten()
        o_bgnd, lse_bgn = flash(q_bld[:, bucket.q_idx_gn], k_bld[:, bucket.k_idx_gk],
                                 v_bld[:, bucket.k_idx_gk], scale=scale)
        out_bld[:, qi] = o_bgnd.reshape(BH, G * n, D)
        lse_bl[:, qi] = lse_bgn.reshape(BH, G * n).to(lse_r.dtype)
    return out_rd, lse_r


def anchor_backward(do_bld, q_bld, k_bld, v_bld, out_rd, lse_r, idx: GatherIndex, scale: float):
    """(dq, dk, dv) (BH, L, D) of the anchor partials, given the final output and LSE."""
    BH, L, D = q_bld.shape
    out_bld, lse_bl = out_rd.view(BH, L, D), lse_r.view(BH, L)
    dq_bld, dk_bld, dv_bld = (torch.zeros_like(t) for t in (q_bld, k_bld, v_bld))
    for bucket in idx.buckets:
        qi, ki = bucket.q_idx_gn, bucket.k_idx_gk
        dq, dk, dv = flash_bwd(do_bld[:, qi], q_bld[:, qi], k_bld[:, ki], v_bld[:, ki],
                                out_bld[:, qi], lse_bl[:, qi], 0.0, False, scale=scale)
        dq_bld.index_add_(1, qi.flatten(), dq.reshape(BH, -1, D))
        dk_bld.index_add_(1, ki.flatten(), dk.reshape(BH, -1, D))
        dv_bld.index_add_(1, ki.flatten(), dv.reshape(BH, -1, D))
    return dq_bld, dk_bld, dv_bld


def routed_piece(q_nd, ks_ld, vs_ld, plan, idx, c, rows_n, L, scale):
    """Queries ``q_nd`` attend the keys of chunk c: (out (n, D), lse (n,)); -inf lse for a row with
    no un-anchored key in c (never produced by route())."""
    k_md, v_md = ks_ld[idx.offsets[c]:idx.offsets[c + 1]], vs_ld[idx.offsets[c]:idx.offsets[c + 1]]
    n, D = q_nd.shape
    if not idx.partial_c[c]:
        o, lse = flash(q_nd[None, None], k_md[None, None], v_md[None, None], scale=scale)
        return o.view(n, D), lse.view(n)
    keep_n, mask = partial_mask(idx, plan.structure, c, rows_n, L, q_nd.dtype)
    o_nd = q_nd.new_zeros(n, D)
    lse_n = q_nd.new_full((n,), float("-inf"))
    if bool(keep_n.any()):
        o, lse = flash(q_nd[keep_n][None, None], k_md[None, None], v_md[None, None], attn_mask=mask, scale=scale)
        o_nd[keep_n] = o.view(-1, D)
        lse_n[keep_n] = lse.view(-1).to(lse_n.dtype)
    return o_nd, lse_n


def routed_piece_bwd(do_nd, q_nd, ks_ld, vs_ld, o_nd, lse_n1, plan, idx, c, rows_n, L, scale):
    """This piece's share of (dq (n, D), dk (m, D), dv (m, D)) given the final out and lse."""
    k_md, v_md = ks_ld[idx.offsets[c]:idx.offsets[c + 1]], vs_ld[idx.offsets[c]:idx.offsets[c + 1]]
    n, D = q_nd.shape
    e = lambda t: t[None, None]  # noqa: E731
    if not idx.partial_c[c]:
        dq, dk, dv = flash_bwd(e(do_nd), e(q_nd), e(k_md), e(v_md), e(o_nd), e(lse_n1.view(n)), 0.0, False,
                                scale=scale)
        return dq.view(n, D), dk.view(-1, D), dv.view(-1, D)
    keep_n, mask = partial_mask(idx, plan.structure, c, rows_n, L, q_nd.dtype)
    dq_nd = torch.zeros_like(q_nd)
    if not bool(keep_n.any()):
        return dq_nd, torch.zeros_like(k_md), torch.zeros_like(v_md)
    kp = lambda t: e(t[keep_n].contiguous())  # noqa: E731
    dq, dk, dv = flash_bwd(kp(do_nd), kp(q_nd), e(k_md), e(v_md), kp(o_nd), kp(lse_n1.view(n)), 0.0, False,
                            attn_mask=mask, scale=scale)
    dq_nd[keep_n] = dq.view(-1, D)
    return dq_nd, dk.view(-1, D), dv.view(-1, D)


def merge_partial(out_rd, lse_r, rows_n, o_nd, lse_n) -> None:
    """out[rows], lse[rows] <- the exact log-sum-exp merge of the running rows with the partial
    ``(o_nd, lse_n)`` (rows with no key yet, lse = -inf, stay as they are)."""
    lse_old = lse_r[rows_n]
    new = torch.logaddexp(lse_old, lse_n)
    keep = torch.isfinite(new)
    w_old = torch.where(keep, (lse_old - new).exp(), 1.0)
    w_new = torch.where(keep, (lse_n - new).exp(), 0.0)
    out_rd[rows_n] = out_rd[rows_n] * w_old[:, None] + o_nd * w_new[:, None]
    lse_r[rows_n] = torch.where(keep, new, lse_old)


def merge_scattered(out_rd: torch.Tensor, lse_r: torch.Tensor, o_ed: torch.Tensor, lse_e: torch.Tensor,
                    rows_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact log-sum-exp merge of one partial per row ``(out_rd (N, D), lse_r (N,))`` with packed
    partials ``(o_ed (E, D), lse_e (E,))``, partial e belonging to row ``rows_e[e]`` (any number per row,
    any order). Returns new ``(out (N, D), lse (N,))`` in ``out_rd``'s dtype (the compute dtype); every
    row's first partial must cover at least one key (finite lse), as MoC's anchors always do."""
    m_r = lse_r.scatter_reduce(0, rows_e, lse_e, "amax")  # per-row max: exp() below never overflows
    sum_r = (lse_r - m_r).exp_().index_add_(0, rows_e, (lse_e - m_r[rows_e]).exp_())
    lse = m_r + sum_r.log_()
    out = out_rd * (lse_r - lse).exp_()[:, None]
    w_e = (lse_e - lse[rows_e]).exp_()
    out.index_add_(0, rows_e, o_ed.to(out.dtype) * w_e[:, None])
    return out, lse


def apply_in_compute_dtype(fn: type[torch.autograd.Function], q, k, v, plan, state, scale: float):
    """Run a CPU impl's autograd function: (output (B, H, L, D) in q's dtype, natural-log log-sum-exp
    (B, H, L) in the compute dtype). float32/float64 run natively; bfloat16/float16 are computed in
    float32 and rounded once at the end."""
    dt = q.dtype if q.dtype in (torch.float32, torch.float64) else torch.float32
    q_, k_, v_ = (t.to(dt).contiguous() for t in (q, k, v))
    out, lse = fn.apply(q_, k_, v_, plan, state, scale)
    return out.to(q.dtype), lse


# ----------------------------------------------------------------------------- working set (no tensors)
def cpu_cast_bytes(s: MoCSizes) -> int:
    """:func:`apply_in_compute_dtype` computes half types in float32: copies of q, k, v (saved for backward);
    backward adds the float32 output gradient and float32 dq, dk, dv before they are cast back."""
    if s.e == s.f:
        return 0
    rows_d = s.rows * s.head_dim * 4
    return 3 * rows_d + (4 * rows_d if s.requires_grad else 0)


def anchor_forward_bytes(s: MoCSizes) -> int:
    """:func:`anchor_forward` on every bucket (bounded by all buckets together): gathered queries, keys
    and values, the flash output (and its layout copy) and log-sum-exp."""
    D, f = s.head_dim, s.f
    return 3 * s.rows * D * f + 2 * s.bh * s.anchor_keys * D * f + s.rows * 4


def anchor_backward_bytes(s: MoCSizes) -> int:
    """:func:`anchor_backward` beyond its dq, dk, dv (B*H*L*D each, which the caller keeps): per bucket
    the gathered output gradient, queries, outputs, keys, values, LSE and flash backward's dq, dk, dv."""
    D, f = s.head_dim, s.f
    return 4 * s.rows * D * f + 4 * s.bh * s.anchor_keys * D * f + s.rows * f


def merge_scattered_bytes(rows: int, pairs: int, head_dim: int, f: int) -> int:
    """:func:`merge_scattered` in compute type ``f`` bytes: per-row max, sum and log-sum-exp, the new
    output rows, per-pair gathered maxima, weights and weighted partials (E, D)."""
    return 4 * rows * f + rows * head_dim * f + 4 * pairs * f + pairs * head_dim * f


def partial_piece_bytes(s: MoCSizes) -> int:
    """One partly anchored chunk (:func:`routed_piece`, its backward): the (rows, keys) anchored map,
    two comparisons, the float mask and its kept rows, gathered rows, output and merge temporaries."""
    if not s.partial_chunks:
        return 0
    factor = 2 if s.requires_grad else 1
    return factor * (s.tokens * s.max_chunk * (3 + 2 * s.f) + 6 * s.tokens * s.head_dim * s.f)
