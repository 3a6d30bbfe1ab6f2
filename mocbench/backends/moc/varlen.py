"""MoC impl ``varlen``: exact per-token MoC on flash attention's variable-length kernels.

moc-spec §5 computed as partial attentions over disjoint key sets, merged exactly by log-sum-exp (the
decomposition every fast impl shares, see :mod:`partials`), with each partial a list of *segments* of
one variable-length flash call (:mod:`varlen_kernels`: torch's FA2 on CUDA, FA3/FA4 where activated; a
per-segment stand-in on CPU). Everything here (index building, offsets, merge, backward assembly) is the
same code on every device; only the segment kernel differs.

1. **Anchors**: one segment per (batch·head, anchor group), the heads folded into the rows
   (``(B*H*L, 1, D)``). A group's queries are a shot or a chunk; its keys that shot or chunk plus the
   captions of the text anchor. Queries are a view of q when the groups tile the stream in order (shot
   anchors, content-aligned chunks); keys are a view when the groups' key lists do too (no caption from
   another shot to add), else gathered once per call.
2. **Routed keys**: the keys in chunk-sorted order (a view when chunks are contiguous in the stream, else
   gathered once) cut into *units*: a chunk, or with ``local_anchor="shot"`` a chunk's part in one shot
   (only ``fixed:m`` chunks have several). Every unit is wholly anchored or wholly un-anchored for any
   query, so a routed chunk is the units of it that are not anchored for the query: no key mask, and no
   key counted twice. One segment per (batch·head, unit): the queries routed to it, gathered into a
   packed buffer (``rows_e``), against the unit's keys (contiguous rows: a view).
3. **Merge**: :func:`partials.merge_scattered` folds each query's routed partials into its anchor
   partial (exact log-sum-exp, in float32, float64 for float64 inputs).
4. **Backward**: flash backward of every segment with the *final* output and log-sum-exp gives exactly
   that partial's share; dk/dv of routed units are disjoint (one segment per unit: no atomics), dq of
   routed pairs is summed into the query rows by ``index_add``, anchor keys gathered more than once
   (captions) by ``index_add``. Units no query routed to get zero gradient (never read from the kernel).

Prepare (timed with routing) builds the pair list on the tensors' device and reads a few numbers back
to the host (pair count, longest segment, split offsets) in one synchronisation (:func:`read_back`), the
only one of any MoC prepare path (tests/test_moc_host_sync.py): flash kernels take ``max_seqlen`` as a
host integer and launch ``ceil(max_seqlen / 128)`` query blocks for *every* segment. Without reading it,
the bound would be L (a unit can be routed by every query of a head): at the paper's layout that launches
B*H*U*L/128, about 4.8 million mostly empty thread blocks per call (24 heads, 141 units, 1,412 query
blocks), where the real longest segment is a few query blocks. Layout-only tables are cached on the
layout, per device.

Legend: B batch, H heads, BH = B*H, L tokens, N = BH*L rows, D head_dim, C chunks, U units, K routed
slots per query, P most units per chunk, E routed (query, unit) pairs, Ka anchor keys per head.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch

from mocbench.backends.moc.gather_index import anchor_groups
from mocbench.backends.moc.partials import merge_scattered, merge_scattered_bytes
from mocbench.backends.moc.sizes import MoCSizes
from mocbench.backends.moc.varlen_kernels import MAX_SEGMENTS, segments_backward, segments_forward
from mocbench.workspace import KERNEL_SCRATCH_BYTES, compute_itemsize, itemsize


# ----------------------------------------------------------------------------- layout-only tables
@dataclass(frozen=True, eq=False)
class VarlenLayout:
    """Everything ``varlen`` needs that depends on the layout and anchors only (cached per device)."""

    tokens: int  # L
    aq_index: torch.Tensor | None  # (L,) token positions in anchor-query order; None: the stream order
    ak_index: torch.Tensor | None  # (Ka,) token positions in anchor-key order; None: the stream order
    a_q_off: torch.Tensor  # (G+1,) int64 host: group g's queries are rows a_q_off[g]:a_q_off[g+1]
    a_k_off: torch.Tensor  # (G+1,) int64 host, the same for its keys
    a_max_q: int
    a_max_k: int
    sort_index: torch.Tensor | None  # (L,) chunk-sorted token positions; None: the stream order
    u_off: torch.Tensor  # (U+1,) int64 host: unit u is chunk-sorted rows u_off[u]:u_off[u+1]
    max_unit: int
    max_units_per_chunk: int  # P
    unit_first_c: torch.Tensor  # (C,) int64: first unit of each chunk
    unit_count_c: torch.Tensor  # (C,) int64: units of each chunk
    unit_anchor_u: torch.Tensor  # (U,) int64: the shot (local "shot") or chunk (local "chunk") of a unit
    unit_text_u: torch.Tensor  # (U,) bool: a caption unit (anchored for everyone under the text anchor)
    unit_of_sorted_l: torch.Tensor  # (L,) int64: unit of each chunk-sorted row
    tok_anchor_l: torch.Tensor  # (L,) int64: each query's shot (local "shot") or chunk (local "chunk")
    text_anchor: bool

    @property
    def num_units(self) -> int:
        return self.u_off.numel() - 1


def varlen_layout(plan) -> VarlenLayout:
    """The anchor groups (queries, keys) and the units of the chunk-sorted keys of ``plan``'s layout and
    anchors, on its device (cached on the layout)."""
    structure, layout, device = plan.structure, plan.layout, plan.device
    key = ("moc_varlen_layout", structure.chunks.rule, structure.text_anchor, structure.local_anchor, str(device))
    if key in layout._cache:
        return layout._cache[key]
    L, ct = layout.num_tokens, structure.chunks
    local_shot = structure.local_anchor == "shot"
    groups = anchor_groups(structure, layout.shot_id)
    zero = torch.zeros(1, dtype=torch.int64)
    a_q_off = torch.cat([zero, torch.tensor([g[0].numel() for g in groups]).cumsum(0)])
    a_k_off = torch.cat([zero, torch.tensor([g[1].numel() for g in groups]).cumsum(0)])
    aq = torch.cat([g[0] for g in groups])
    ak = torch.cat([g[1] for g in groups])
    # units: runs of the chunk-sorted order with one chunk (and, for the shot anchor, one shot)
    sort_l = ct.token_index
    C = ct.num_chunks
    chunk_sorted = torch.repeat_interleave(torch.arange(C), ct.sizes)
    anchor_of_token = layout.shot_id if local_shot else ct.chunk_id
    new_unit = torch.ones(L, dtype=torch.bool)
    new_unit[1:] = chunk_sorted[1:] != chunk_sorted[:-1]
    if local_shot:
        shot_sorted = layout.shot_id[sort_l]
        new_unit[1:] |= shot_sorted[1:] != shot_sorted[:-1]
    starts = new_unit.nonzero().flatten()
    unit_chunk = chunk_sorted[starts]
    u_off = torch.cat([starts, torch.tensor([L])])
    unit_count = torch.bincount(unit_chunk, minlength=C)

    def on_device(index: torch.Tensor) -> torch.Tensor | None:  # None: the identity (use views)
        n = index.numel()
        return None if n == L and bool((index == torch.arange(L)).all()) else index.to(device)

    out = VarlenLayout(
        tokens=L, aq_index=on_device(aq), ak_index=on_device(ak), a_q_off=a_q_off, a_k_off=a_k_off,
        a_max_q=int((a_q_off[1:] - a_q_off[:-1]).max()), a_max_k=int((a_k_off[1:] - a_k_off[:-1]).max()),
        sort_index=on_device(sort_l), u_off=u_off, max_unit=int((u_off[1:] - u_off[:-1]).max()),
        max_units_per_chunk=int(unit_count.max()),
        unit_first_c=torch.searchsorted(unit_chunk, torch.arange(C)).to(device), unit_count_c=unit_count.to(device),
        unit_anchor_u=anchor_of_token[sort_l][starts].to(device), unit_text_u=ct.is_text[unit_chunk].to(device),
        unit_of_sorted_l=(torch.cumsum(new_unit, 0) - 1).to(device), tok_anchor_l=anchor_of_token.to(device),
        text_anchor=structure.text_anchor)
    layout._cache[key] = out
    return out


# ----------------------------------------------------------------------------- per-call state
Splits = tuple[tuple[int, int, int, int, int, int], ...] | None


@dataclass(frozen=True, eq=False)
class Segments:
    """One variable-length flash call's segment list (int32 offsets on the device) and its host sizes."""

    cu_q: torch.Tensor
    cu_k: torch.Tensor
    max_q: int
    max_k: int
    splits: Splits  # host offsets cutting more than MAX_SEGMENTS segments into several calls

    def forward(self, q, k, v, scale):
        return segments_forward(q, k, v, self.cu_q, self.cu_k, self.max_q, self.max_k, scale, self.splits)

    def backward(self, do, q, k, v, out, lse, scale):
        return segments_backward(do, q, k, v, out, lse, self.cu_q, self.cu_k, self.max_q, self.max_k, scale,
                                 self.splits)


@dataclass(frozen=True, eq=False)
class VarlenState:
    """Built by :func:`prepare_varlen` (timed with routing)."""

    lay: VarlenLayout
    anchors: Segments
    routed: Segments | None  # None: no routed pair
    rows_e: torch.Tensor  # (E,) int64 query row bh*L + i of every routed pair, grouped by (bh, unit)
    unused_keys: torch.Tensor | None  # (N,) bool: chunk-sorted key rows of units no query routed to


def _offsets(per_head: torch.Tensor, BH: int, stride: int) -> torch.Tensor:
    """(BH*G+1,) int64 host: the per-head offsets (G+1,) repeated for every bh at ``bh * stride``."""
    heads = torch.arange(BH, dtype=torch.int64)[:, None] * stride
    return torch.cat([(heads + per_head[None, :-1]).flatten(), torch.tensor([BH * stride])])


def _i32(t: torch.Tensor, device) -> torch.Tensor:
    return t.to(device=device, dtype=torch.int32)


def _splits(n_seg: int, q_at, k_at) -> Splits:
    """Calls of at most MAX_SEGMENTS segments: (s0, s1, q0, q1, k0, k1) with host row offsets."""
    if n_seg <= MAX_SEGMENTS:
        return None
    bounds = list(range(0, n_seg, MAX_SEGMENTS)) + [n_seg]
    return tuple((s0, s1, q_at(s0), q_at(s1), k_at(s0), k_at(s1)) for s0, s1 in pairwise(bounds))


@dataclass(frozen=True, eq=False)
class _HeadOffsets:
    """Offsets that depend on the layout and B*H only (cached: no host-to-device copy per call)."""

    anchors: Segments
    routed_cu_k: torch.Tensor  # (BH*U+1,) int32 on the device: unit u of head bh is rows bh*L + u_off[u]...
    routed_cu_k_host: torch.Tensor  # the same, int64 on the host (split offsets)


def _head_offsets(plan, lay: VarlenLayout, BH: int) -> _HeadOffsets:
    structure = plan.structure
    key = ("moc_varlen_offsets", structure.chunks.rule, structure.text_anchor, structure.local_anchor,
           str(plan.device), BH)
    cache = plan.layout._cache
    if key not in cache:
        L, dev = lay.tokens, plan.device
        a_q, a_k = _offsets(lay.a_q_off, BH, L), _offsets(lay.a_k_off, BH, int(lay.a_k_off[-1]))
        anchors = Segments(_i32(a_q, dev), _i32(a_k, dev), lay.a_max_q, lay.a_max_k,
                           _splits(a_q.numel() - 1, lambda s: int(a_q[s]), lambda s: int(a_k[s])))
        cu_k = _offsets(lay.u_off, BH, L)
        cache[key] = _HeadOffsets(anchors, _i32(cu_k, dev), cu_k)
    return cache[key]


def prepare_varlen(plan) -> VarlenState:
    lay = varlen_layout(plan)
    sel = plan.selected
    B, H, L, K = sel.shape
    BH, U, dev = B * H, lay.num_units, sel.device
    rows = max(BH * L * K * lay.max_units_per_chunk, BH * int(lay.a_k_off[-1]))
    if rows >= 2**31:
        raise ValueError(f"moc impl 'varlen': up to {rows} packed rows (batch*heads*tokens*routed units, or anchor "
                         "keys) exceed the flash kernels' int32 offsets; split the batch or heads across calls")
    heads = _head_offsets(plan, lay, BH)
    anchors = heads.anchors
    empty = torch.zeros(0, dtype=torch.int64, device=dev)
    if K == 0:
        return VarlenState(lay, anchors, None, empty, None)
    # routed (query, unit) pairs: every un-anchored unit of every routed chunk; duplicates and -1 dropped
    srt = sel.reshape(BH, L, K).sort(-1).values
    dup = torch.zeros_like(srt, dtype=torch.bool)
    dup[..., 1:] = srt[..., 1:] == srt[..., :-1]
    c_blk = srt.masked_fill(dup, -1)
    ok_blk = c_blk >= 0
    c_blk = c_blk.clamp(min=0)
    P = lay.max_units_per_chunk
    j = torch.arange(P, device=dev)
    u_blkp = lay.unit_first_c[c_blk][..., None] + j  # (BH, L, K, P)
    ok_blkp = ok_blk[..., None] & (j < lay.unit_count_c[c_blk][..., None])
    u_blkp = u_blkp.clamp(max=U - 1)
    anchored = lay.unit_anchor_u[u_blkp] == lay.tok_anchor_l[None, :, None, None]
    if lay.text_anchor:
        anchored |= lay.unit_text_u[u_blkp]
    ok_blkp &= ~anchored
    bh = torch.arange(BH, device=dev).view(BH, 1, 1, 1)
    g_e = torch.where(ok_blkp, bh * U + u_blkp, BH * U).flatten()
    g_sorted, order = torch.sort(g_e, stable=True)
    cu_q = torch.searchsorted(g_sorted, torch.arange(BH * U + 1, device=dev))  # (BH*U+1,) int64
    counts = cu_q[1:] - cu_q[:-1]
    cut = list(range(0, BH * U, MAX_SEGMENTS))[1:] if BH * U > MAX_SEGMENTS else []
    host = read_back(torch.cat([cu_q[-1:], counts.max()[None], cu_q[cut]]))
    E, max_q = host[0], host[1]
    if E == 0:
        return VarlenState(lay, anchors, None, empty, None)
    q_at = dict(zip([0, *cut, BH * U], [0, *host[2:], E]))
    cu_k = heads.routed_cu_k_host
    routed = Segments(cu_q.to(torch.int32), heads.routed_cu_k, max_q, lay.max_unit,
                      _splits(BH * U, q_at.__getitem__, lambda s: int(cu_k[s])))
    rows_e = order[:E] // (K * P)  # flattened (bh, i, k, p) -> query row bh*L + i
    unused = (counts == 0).view(BH, U)[:, lay.unit_of_sorted_l].flatten()
    return VarlenState(lay, anchors, routed, rows_e, unused)


def read_back(t: torch.Tensor) -> list[int]:
    """The one device-to-host synchronisation of ``varlen``'s prepare (see the module docstring)."""
    return t.tolist()


# ----------------------------------------------------------------------------- autograd
def _rows(t_bld: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """(BH, L, D) -> packed (BH*n, 1, D) rows in ``index`` order (a view when index is None)."""
    D = t_bld.shape[-1]
    return (t_bld if index is None else t_bld[:, index]).reshape(-1, 1, D)


def _add_rows(acc_bld: torch.Tensor, rows_t1d: torch.Tensor, index: torch.Tensor | None) -> None:
    """acc (BH, L, D) += packed rows in ``index`` order (repeated positions are summed)."""
    BH, _, D = acc_bld.shape
    src = rows_t1d.reshape(BH, -1, D).to(acc_bld.dtype)
    if index is None:
        acc_bld += src
    else:
        acc_bld.index_add_(1, index, src)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _MoCVarlenFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_bhld, k_bhld, v_bhld, plan, state: VarlenState, scale):
        B, H, L, D = q_bhld.shape
        BH, N, cd = B * H, B * H * L, _compute_dtype(q_bhld.dtype)
        lay = state.lay
        q_bld, k_bld, v_bld = (t.reshape(BH, L, D) for t in (q_bhld, k_bhld, v_bhld))
        o_a, lse_a = state.anchors.forward(_rows(q_bld, lay.aq_index), _rows(k_bld, lay.ak_index),
                                           _rows(v_bld, lay.ak_index), scale)
        out_rd, lse_r = o_a.reshape(N, D).to(cd), lse_a.to(cd)
        if lay.aq_index is not None:  # back to stream order
            out_rd = out_rd.view(BH, L, D).index_copy(1, lay.aq_index, out_rd.view(BH, L, D)).view(N, D)
            lse_r = lse_r.view(BH, L).index_copy(1, lay.aq_index, lse_r.view(BH, L)).view(N)
        if state.routed is not None:
            q_e = q_bld.reshape(N, 1, D).index_select(0, state.rows_e)
            o_e, lse_e = state.routed.forward(q_e, _rows(k_bld, lay.sort_index), _rows(v_bld, lay.sort_index), scale)
            out_rd, lse_r = merge_scattered(out_rd, lse_r, o_e.reshape(-1, D), lse_e.to(cd), state.rows_e)
        out = out_rd.to(q_bhld.dtype)
        ctx.plan, ctx.state, ctx.scale = plan, state, scale
        ctx.save_for_backward(q_bhld, k_bhld, v_bhld, out, lse_r)
        ctx.mark_non_differentiable(lse_r)
        return out.view(B, H, L, D), lse_r.view(B, H, L)

    @staticmethod
    def backward(ctx, dout_bhld, _dlse):
        q_bhld, k_bhld, v_bhld, out_rd, lse_r = ctx.saved_tensors
        state, scale = ctx.state, ctx.scale
        lay = state.lay
        B, H, L, D = q_bhld.shape
        BH, N, cd = B * H, B * H * L, _compute_dtype(q_bhld.dtype)
        q_bld, k_bld, v_bld = (t.reshape(BH, L, D) for t in (q_bhld, k_bhld, v_bhld))
        do_bld = dout_bhld.reshape(BH, L, D).to(q_bhld.dtype).contiguous()
        out_bld = out_rd.view(BH, L, D)
        lse_k = lse_r.to(torch.float64 if cd == torch.float64 else torch.float32)  # what the kernels take
        dq_bld, dk_bld, dv_bld = (torch.zeros(BH, L, D, dtype=cd, device=q_bhld.device) for _ in range(3))
        # anchors
        aq, ak = lay.aq_index, lay.ak_index
        lse_a = lse_k.view(BH, L) if aq is None else lse_k.view(BH, L)[:, aq]
        dq, dk, dv = state.anchors.backward(_rows(do_bld, aq), _rows(q_bld, aq), _rows(k_bld, ak), _rows(v_bld, ak),
                                            _rows(out_bld, aq), lse_a.reshape(-1), scale)
        _add_rows(dq_bld, dq, aq)
        _add_rows(dk_bld, dk, ak)
        _add_rows(dv_bld, dv, ak)
        # routed units
        if state.routed is not None:
            rows_e = state.rows_e
            def pick(t):
                return t.reshape(N, 1, D).index_select(0, rows_e)

            dq_e, dks, dvs = state.routed.backward(pick(do_bld), pick(q_bld), _rows(k_bld, lay.sort_index),
                                                   _rows(v_bld, lay.sort_index), pick(out_bld), lse_k[rows_e], scale)
            dq_bld.view(N, D).index_add_(0, rows_e, dq_e.reshape(-1, D).to(cd))
            unused = state.unused_keys[:, None]
            _add_rows(dk_bld, dks.reshape(N, D).masked_fill(unused, 0), lay.sort_index)
            _add_rows(dv_bld, dvs.reshape(N, D).masked_fill(unused, 0), lay.sort_index)
        shape, dt = q_bhld.shape, q_bhld.dtype
        return dq_bld.to(dt).view(shape), dk_bld.to(dt).view(shape), dv_bld.to(dt).view(shape), None, None, None


def varlen_kernel(q, k, v, plan, state: VarlenState, scale: float) -> torch.Tensor:
    """The impl's entry under :func:`mocbench.backends.moc.impl.run_impl` (plan checked, scale resolved).
    Also the documented way to run the decomposition at any dtype on CPU (the tests do, in float64)."""
    q_, k_, v_ = (t.contiguous() for t in (q, k, v))
    return _MoCVarlenFn.apply(q_, k_, v_, plan, state, scale)[0]


# ----------------------------------------------------------------------------- working set (no tensors)
def _flash_bwd_scratch(rows: int, segments: int, D: int) -> int:
    """FA2's backward scratch: float32 dq accumulator and softmax_d over rows padded by 128 per segment."""
    d_rounded = 256 if D > 192 else -(-D // 32) * 32
    return (rows + 128 * segments) * (d_rounded + 1) * 4


def varlen_workspace_bytes(s: MoCSizes) -> int:
    """impl ``varlen`` (device bytes), an upper bound: contiguous copies of q, k, v; prepare: the sort and
    dedup of the (N, K) routing and the (N, K, P) pair tables (units per routed chunk bounded by the shots
    when chunks span shots), the pair list, segment offsets and the unused-key mask (kept); forward: the
    anchor phase (gathered queries, keys and values, its output, log-sum-exp and their stream-order
    copies) then the routed phase (chunk-sorted keys and values, gathered queries, packed outputs, the
    merge); backward: float32 dq, dk, dv accumulators plus the larger of the anchor and the routed phase
    (gathered inputs, the kernels' gradients, their compute-dtype copies, FA2's scratch)."""
    D, e, f, N = s.head_dim, itemsize(s.dtype), compute_itemsize(s.dtype), s.rows
    P = s.shots if s.partial_chunks else 1
    E = N * s.slots * P
    Ka = s.bh * s.anchor_keys
    rd, kd = N * D, Ka * D
    seg_a = s.bh * max(s.chunks, s.shots)
    seg_r = s.bh * (s.chunks + s.shots)
    copies = 3 * rd * e
    kept = E * 8 + N + 2 * (seg_a + seg_r + 2) * (8 + 4)
    build = 5 * N * s.slots * 8 + N * s.slots * P * (4 * 8 + 3) + 3 * (seg_r + 1) * 8 if s.slots else 0
    anchor_fwd = rd * e + 2 * kd * e + 2 * (rd * e + N * 4) + 2 * (rd * f + N * f)
    routed_fwd = rd * f + N * f + 2 * rd * e + 2 * E * D * e + E * 4 + E * f + merge_scattered_bytes(N, E, D, f)
    forward = max(anchor_fwd, routed_fwd if s.slots else 0)
    backward = 0
    if s.requires_grad:
        anchor_bwd = 3 * rd * e + N * 8 + 2 * kd * e + rd * e + 2 * kd * e + rd * f + 2 * kd * f \
            + _flash_bwd_scratch(N, seg_a, D)
        routed_bwd = 3 * E * D * e + E * 8 + 2 * rd * e + E * D * e + 2 * rd * e + 2 * rd * e + E * D * f \
            + 2 * rd * f + _flash_bwd_scratch(E, seg_r, D)
        backward = rd * e + N * 8 + 3 * rd * f + max(anchor_bwd, routed_bwd if s.slots else 0)
    saved = N * f
    return copies + kept + KERNEL_SCRATCH_BYTES + max(build, saved + forward, saved + backward)
