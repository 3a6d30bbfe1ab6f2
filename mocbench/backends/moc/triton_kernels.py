"""Triton kernels of MoC impl ``"triton"``: partial attentions that read the routing directly.

Every kernel is one *partial attention*: a tile of up to ``BLOCK_M`` queries (gathered by row
index) against a key set walked in blocks of ``BLOCK_N`` keys (gathered by token index), with an
online softmax in float32. Two key sets exist:

* routed: the keys of chunk c, for the queries that routed to c (a CSR built from ``selected``).
  Keys that are already anchors of a query (only possible in ``fixed:m`` chunks spanning two
  shots with the shot anchor) are masked per (query, key) from per-token shot/chunk/text ids;
* anchor: the anchor keys of an anchor group (own chunk or own shot, plus captions).

Forward kernels write each partial's normalised output and natural-log LSE; ``_merge`` folds
the anchor partial and the K routed slots of every row exactly. Backward kernels recompute
scores and use the *final* LSE and ``delta = rowsum(dO * O)``, which gives each partial's exact
share of dq, dk, dv (flash-attention's decomposition); shares are accumulated with float32
atomics. ``PREC`` is ``tl.dot``'s input precision: "ieee" for float32 inputs (exact to 1e-5, no
TF32), "tf32" is never used; bf16/fp16 inputs multiply natively with float32 accumulation.

The kernels below are plain Python functions (their shared pieces are ``@triton.jit`` helpers);
:func:`kernels` compiles them with ``triton.jit``. For CUDA
tensors that is the GPU compiler; with ``TRITON_INTERPRET=1`` set before triton is imported, it is
Triton's interpreter, which runs the same kernels on CPU tensors (correctness testing only: the
interpreter replaces triton.language itself, so one process cannot mix the two modes).
Legend: BH batch*heads, L tokens, D head_dim (padded to DP, a power of two >= 16), K slots.
"""

from __future__ import annotations

import functools

import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # scores are kept in the log2 domain (exp2), LSEs are stored in natural log


# ----------------------------------------------------------------------------- shared pieces
@triton.jit
def _routed_tile(tile_group, tile_start, group_ptr, rows_e, chunk_off, tok_shot, tok_chunk, L, C, G,
                 BLOCK_M: tl.constexpr):
    """This program's tile of a routed (bh, chunk) group: rows (64-bit), their shot/chunk ids, and the
    chunk's key range [k0, k1) in chunk-sorted order. Dead tiles (beyond the last) get no rows, no keys."""
    pid = tl.program_id(0)
    g_raw = tl.load(tile_group + pid)
    live = g_raw < G
    g = tl.minimum(g_raw, G - 1)
    bh = g // C
    c = g % C
    start = tl.load(tile_start + pid)
    end = tl.where(live, tl.load(group_ptr + g + 1), start)
    offs_m = start + tl.arange(0, BLOCK_M)
    mrow = offs_m < end
    rows = tl.load(rows_e + offs_m, mask=mrow, other=0).to(tl.int64)  # 64-bit offsets: BH*L*D can pass 2^31
    i_tok = rows - bh * L
    q_shot = tl.load(tok_shot + i_tok, mask=mrow, other=-1)
    q_chunk = tl.load(tok_chunk + i_tok, mask=mrow, other=-1)
    k0 = tl.load(chunk_off + c)
    k1 = tl.where(live, tl.load(chunk_off + c + 1), k0)
    return bh, offs_m, mrow, rows, q_shot, q_chunk, k0, k1


@triton.jit
def _routed_keys(tok_idx, tok_text, tok_shot, tok_chunk, n0, k1, bh, L, mrow, q_shot, q_chunk,
                 BLOCK_N: tl.constexpr, TEXT_ANCHOR: tl.constexpr, LOCAL_SHOT: tl.constexpr):
    """A block of a routed chunk's keys: their rows, validity, and which (query, key) pairs count
    (a key that is already an anchor of the query is masked; only partly anchored chunks have any)."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    mn = offs_n < k1
    kt = tl.load(tok_idx + offs_n, mask=mn, other=0)
    if LOCAL_SHOT:
        anchored = tl.load(tok_shot + kt, mask=mn, other=-2)[None, :] == q_shot[:, None]
    else:
        anchored = tl.load(tok_chunk + kt, mask=mn, other=-2)[None, :] == q_chunk[:, None]
    if TEXT_ANCHOR:
        anchored = anchored | (tl.load(tok_text + kt, mask=mn, other=0)[None, :] != 0)
    return (bh * L + kt).to(tl.int64), mn, mrow[:, None] & mn[None, :] & (anchored == 0)


@triton.jit
def _anchor_tile(q_idx, n_q, L, BLOCK_M: tl.constexpr):
    """grid (query tiles of a group, groups, BH): this program's rows of anchor group `grp`."""
    grp = tl.program_id(1)
    bh = tl.program_id(2)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    mrow = offs_m < n_q
    rows = (bh * L + tl.load(q_idx + grp * n_q + offs_m, mask=mrow, other=0)).to(tl.int64)
    return bh, grp, mrow, rows


@triton.jit
def _anchor_keys(k_idx, grp, n_k, n0, bh, L, BLOCK_N: tl.constexpr):
    """A block of an anchor group's keys: their rows (64-bit) and validity."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    mn = offs_n < n_k
    return (bh * L + tl.load(k_idx + grp * n_k + offs_n, mask=mn, other=0)).to(tl.int64), mn


@triton.jit
def _online_softmax_step(q, k, v, ok, m_i, l_i, acc, qk_scale, PREC: tl.constexpr):
    """One key block of flash attention's online softmax (scores in the log2 domain)."""
    s = tl.where(ok, tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
    return m_new, l_i, acc


@triton.jit
def _finish(m_i, l_i, acc):
    """Normalised output and natural-log LSE of a partial (-inf and zeros for a row with no key)."""
    has = l_i > 0
    o = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, (m_i + tl.log2(tl.where(has, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    return o, lse


@triton.jit
def _backward_step(q, do, k, v, ok, lse2, delta, dq, dK, dV, kv_rows, mn, d, qk_scale, sm_scale,
                   DP: tl.constexpr, PREC: tl.constexpr):
    """One key block of the backward: P from the final LSE, dV += P^T dO, dK += dS^T Q (atomics:
    other partials share these keys), returns dq + dS K."""
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    p = tl.where(ok, tl.exp2(s - lse2[:, None]), 0.0)
    dv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
    dp = tl.dot(do, tl.trans(v), input_precision=PREC)
    ds = p * (dp - delta[:, None])
    dk = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC) * sm_scale
    tl.atomic_add(dV + kv_rows[:, None] * DP + d[None, :], dv, mask=mn[:, None])
    tl.atomic_add(dK + kv_rows[:, None] * DP + d[None, :], dk, mask=mn[:, None])
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=PREC) * sm_scale


@triton.jit
def _load_rows(X, rows, mrow, d, D: tl.constexpr):
    """Rows ``rows`` of a (rows, D) tensor, zero-padded to the padded head dim and masked rows."""
    return tl.load(X + rows[:, None] * D + d[None, :], mask=mrow[:, None] & (d < D)[None, :], other=0.0)


# ----------------------------------------------------------------------------- kernels
def _routed_fwd(Q, Kt, Vt, O_slots, LSE_slots, tile_group, tile_start, group_ptr, rows_e, slots_e, chunk_off,
                tok_idx, tok_text, tok_shot, tok_chunk, L, C, G, qk_scale,
                D: tl.constexpr, DP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                TEXT_ANCHOR: tl.constexpr, LOCAL_SHOT: tl.constexpr, PREC: tl.constexpr):
    bh, offs_m, mrow, rows, q_shot, q_chunk, k0, k1 = _routed_tile(
        tile_group, tile_start, group_ptr, rows_e, chunk_off, tok_shot, tok_chunk, L, C, G, BLOCK_M)
    d = tl.arange(0, DP)
    q = _load_rows(Q, rows, mrow, d, D)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DP], tl.float32)
    for n0 in range(k0, k1, BLOCK_N):
        kv_rows, mn, ok = _routed_keys(tok_idx, tok_text, tok_shot, tok_chunk, n0, k1, bh, L, mrow, q_shot, q_chunk,
                                       BLOCK_N, TEXT_ANCHOR, LOCAL_SHOT)
        k = _load_rows(Kt, kv_rows, mn, d, D)
        v = _load_rows(Vt, kv_rows, mn, d, D)
        m_i, l_i, acc = _online_softmax_step(q, k, v, ok, m_i, l_i, acc, qk_scale, PREC)
    o, lse = _finish(m_i, l_i, acc)
    slots = tl.load(slots_e + offs_m, mask=mrow, other=0).to(tl.int64)
    tl.store(O_slots + slots[:, None] * DP + d[None, :], o, mask=mrow[:, None])
    tl.store(LSE_slots + slots, lse, mask=mrow)


def _anchor_fwd(Q, Kt, Vt, Oa, LSEa, q_idx, k_idx, L, n_q, n_k, qk_scale,
                D: tl.constexpr, DP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr):
    # q_idx (G, n_q) and k_idx (G, n_k): token positions of each anchor group's queries and keys
    bh, grp, mrow, rows = _anchor_tile(q_idx, n_q, L, BLOCK_M)
    d = tl.arange(0, DP)
    q = _load_rows(Q, rows, mrow, d, D)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DP], tl.float32)
    for n0 in range(0, n_k, BLOCK_N):
        kv_rows, mn = _anchor_keys(k_idx, grp, n_k, n0, bh, L, BLOCK_N)
        k = _load_rows(Kt, kv_rows, mn, d, D)
        v = _load_rows(Vt, kv_rows, mn, d, D)
        m_i, l_i, acc = _online_softmax_step(q, k, v, mrow[:, None] & mn[None, :], m_i, l_i, acc, qk_scale, PREC)
    o, lse = _finish(m_i, l_i, acc)
    tl.store(Oa + rows[:, None] * DP + d[None, :], o, mask=mrow[:, None])
    tl.store(LSEa + rows, lse, mask=mrow)


def _merge(Oa, LSEa, O_slots, LSE_slots, Out, LSE, R, K,
           D: tl.constexpr, DP: tl.constexpr, BLOCK_M: tl.constexpr):
    # Out (R, D) in the output dtype; LSE (R,) float32. Empty slots carry LSE -inf.
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    mr = rows < R
    d = tl.arange(0, DP)
    la = tl.load(LSEa + rows, mask=mr, other=0.0)
    mx = la
    for k in range(0, K):
        mx = tl.maximum(mx, tl.load(LSE_slots + rows * K + k, mask=mr, other=float("-inf")))
    wa = tl.exp(la - mx)
    total = wa
    acc = tl.load(Oa + rows[:, None] * DP + d[None, :], mask=mr[:, None], other=0.0) * wa[:, None]
    for k in range(0, K):
        lk = tl.load(LSE_slots + rows * K + k, mask=mr, other=float("-inf"))
        w = tl.where(lk == float("-inf"), 0.0, tl.exp(lk - mx))
        ok = mr & (w > 0)
        ok_k = tl.load(O_slots + (rows * K + k)[:, None] * DP + d[None, :], mask=ok[:, None], other=0.0)
        acc = acc + ok_k * w[:, None]
        total = total + w
    out = acc / total[:, None]
    tl.store(Out + rows[:, None] * D + d[None, :], out.to(Out.dtype.element_ty), mask=mr[:, None] & (d < D)[None, :])
    tl.store(LSE + rows, mx + tl.log(total), mask=mr)


def _routed_bwd(Q, Kt, Vt, dO, LSE, Delta, dQ, dK, dV, tile_group, tile_start, group_ptr, rows_e, chunk_off,
                tok_idx, tok_text, tok_shot, tok_chunk, L, C, G, qk_scale, sm_scale,
                D: tl.constexpr, DP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                TEXT_ANCHOR: tl.constexpr, LOCAL_SHOT: tl.constexpr, PREC: tl.constexpr):
    bh, offs_m, mrow, rows, q_shot, q_chunk, k0, k1 = _routed_tile(
        tile_group, tile_start, group_ptr, rows_e, chunk_off, tok_shot, tok_chunk, L, C, G, BLOCK_M)
    d = tl.arange(0, DP)
    q = _load_rows(Q, rows, mrow, d, D)
    do = _load_rows(dO, rows, mrow, d, D)
    lse2 = tl.load(LSE + rows, mask=mrow, other=0.0) * 1.4426950408889634
    delta = tl.load(Delta + rows, mask=mrow, other=0.0)
    dq = tl.zeros([BLOCK_M, DP], tl.float32)
    for n0 in range(k0, k1, BLOCK_N):
        kv_rows, mn, ok = _routed_keys(tok_idx, tok_text, tok_shot, tok_chunk, n0, k1, bh, L, mrow, q_shot, q_chunk,
                                       BLOCK_N, TEXT_ANCHOR, LOCAL_SHOT)
        k = _load_rows(Kt, kv_rows, mn, d, D)
        v = _load_rows(Vt, kv_rows, mn, d, D)
        dq = _backward_step(q, do, k, v, ok, lse2, delta, dq, dK, dV, kv_rows, mn, d, qk_scale, sm_scale, DP, PREC)
    tl.atomic_add(dQ + rows[:, None] * DP + d[None, :], dq, mask=mrow[:, None])


def _anchor_bwd(Q, Kt, Vt, dO, LSE, Delta, dQ, dK, dV, q_idx, k_idx, L, n_q, n_k, qk_scale, sm_scale,
                D: tl.constexpr, DP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr):
    bh, grp, mrow, rows = _anchor_tile(q_idx, n_q, L, BLOCK_M)
    d = tl.arange(0, DP)
    q = _load_rows(Q, rows, mrow, d, D)
    do = _load_rows(dO, rows, mrow, d, D)
    lse2 = tl.load(LSE + rows, mask=mrow, other=0.0) * 1.4426950408889634
    delta = tl.load(Delta + rows, mask=mrow, other=0.0)
    dq = tl.zeros([BLOCK_M, DP], tl.float32)
    for n0 in range(0, n_k, BLOCK_N):
        kv_rows, mn = _anchor_keys(k_idx, grp, n_k, n0, bh, L, BLOCK_N)
        k = _load_rows(Kt, kv_rows, mn, d, D)
        v = _load_rows(Vt, kv_rows, mn, d, D)
        dq = _backward_step(q, do, k, v, mrow[:, None] & mn[None, :], lse2, delta, dq, dK, dV, kv_rows, mn, d,
                            qk_scale, sm_scale, DP, PREC)
    tl.atomic_add(dQ + rows[:, None] * DP + d[None, :], dq, mask=mrow[:, None])


_KERNELS = {"routed_fwd": _routed_fwd, "anchor_fwd": _anchor_fwd, "merge": _merge, "routed_bwd": _routed_bwd,
            "anchor_bwd": _anchor_bwd}


def interpreter_active() -> bool:
    return bool(triton.knobs.runtime.interpret)


def device_reason(device_type: str) -> str | None:
    """None when the kernels can run on this device type in this process, else why not."""
    if device_type == "cuda":
        return "TRITON_INTERPRET=1 is set: the interpreter cannot run CUDA tensors" if interpreter_active() else None
    if device_type == "cpu":
        return None if interpreter_active() else (
            "on CPU the kernels run only in Triton's interpreter: set TRITON_INTERPRET=1 before starting Python "
            "(correctness testing; use impl 'fused' for speed)")
    return f"triton kernels run on cuda, not {device_type!r}"


@functools.lru_cache(maxsize=1)
def _compiled() -> dict:
    return {name: triton.jit(fn) for name, fn in _KERNELS.items()}


def kernels(device_type: str) -> dict:
    """The jit'd kernels, after checking they can run on ``device_type`` in this process."""
    if (why := device_reason(device_type)) is not None:
        raise ValueError(f"moc impl 'triton': {why}")
    return _compiled()
