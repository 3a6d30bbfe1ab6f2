"""The one device-specific part of MoC impl ``varlen``: attention over packed variable-length segments.

Segment ``s`` pairs the query rows ``cu_q[s]:cu_q[s+1]`` with the key/value rows ``cu_k[s]:cu_k[s+1]``
(flash attention's "varlen" convention; tensors are ``(rows, 1, D)``, the heads folded into the rows).
:func:`segments_forward` returns each query row's output and natural-log log-sum-exp over its segment's
keys; :func:`segments_backward` returns (dq, dk, dv) given an output gradient, the output and the
log-sum-exp, which may be the *final* ones of a merged attention (each partial's exact share).

* CUDA: ``aten._flash_attention_forward`` / ``_flash_attention_backward`` with cumulative sequence
  offsets, the kernels behind ``torch.nn.attention.varlen``: torch's own FA2, or FA3/FA4 where one has
  been activated with ``torch.nn.attention.activate_flash_attention_impl`` (that replaces these ops'
  CUDA kernels process-wide; :func:`flash_variant` reports which is active). float16/bfloat16 only.
* CPU: a stand-in with the same contract, ATen's CPU flash kernel
  (``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward, which return and take the
  log-sum-exp) called once per non-empty segment from Python. It exists so the whole decomposition in
  :mod:`varlen` is tested on CPU against the float64 oracle; it is exact but slow. Rows no segment
  covers are left NaN (and key rows of segments without queries get NaN gradients) on purpose: the
  shared code must never read them, and on CUDA such rows are whatever the kernel leaves there.

Legend: T packed rows, D head_dim; ``cu_*`` int32 (segments + 1,) on the tensors' device.
"""

from __future__ import annotations

from itertools import pairwise

import torch

from mocbench.backends.moc.partials import flash as cpu_flash
from mocbench.backends.moc.partials import flash_bwd as cpu_flash_bwd

# FA2's grid puts the segments on gridDim.y (at most 65535): longer segment lists are split.
MAX_SEGMENTS = 65535


def flash_variant(device_type: str) -> str | None:
    """Which kernel answers the varlen ops on ``device_type``: ``fa2`` (torch's built-in), ``fa3`` /
    ``fa4`` when activated through ``torch.nn.attention``, ``cpu`` for the stand-in."""
    if device_type == "cpu":
        return "cpu"
    if device_type != "cuda":
        return None
    current = getattr(torch.nn.attention, "current_flash_attention_impl", None)  # torch >= 2.10 has it
    active = current() if current is not None else None
    return str(active).lower() if active else "fa2"


def _check_lse(lse: torch.Tensor, rows: int) -> torch.Tensor:
    """The kernel's log-sum-exp as (rows,) float32; any other layout is an error, never reinterpreted."""
    if lse.numel() != rows:
        raise RuntimeError(f"moc impl 'varlen': the flash kernel returned a log-sum-exp of shape {tuple(lse.shape)} "
                           f"for {rows} packed query rows (expected one value per row, e.g. (1, {rows}))")
    return lse.reshape(rows).float()


def segments_forward(q_t1d: torch.Tensor, k_t1d: torch.Tensor, v_t1d: torch.Tensor, cu_q: torch.Tensor,
                     cu_k: torch.Tensor, max_q: int, max_k: int, scale: float,
                     splits: tuple[tuple[int, int, int, int, int, int], ...] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (T, 1, D) in q's dtype, lse (T,): float32, float64 for float64 inputs) of every segment.
    ``splits``: host offsets ``(s0, s1, q0, q1, k0, k1)`` cutting the segment list into calls of at most
    MAX_SEGMENTS segments (the same on every device, so the CPU tests exercise it)."""
    call = _cuda_forward if q_t1d.device.type == "cuda" else _cpu_forward
    outs, lses = [], []
    for s0, s1, q0, q1, k0, k1 in splits or ((0, cu_q.numel() - 1, 0, q_t1d.shape[0], 0, k_t1d.shape[0]),):
        out, lse = call(q_t1d[q0:q1], k_t1d[k0:k1], v_t1d[k0:k1], cu_q[s0:s1 + 1] - q0, cu_k[s0:s1 + 1] - k0,
                        max_q, max_k, scale)
        outs.append(out)
        lses.append(lse)
    if len(outs) == 1:
        return outs[0], lses[0]
    return torch.cat(outs), torch.cat(lses)


def segments_backward(do_t1d, q_t1d, k_t1d, v_t1d, out_t1d, lse_t, cu_q, cu_k, max_q: int, max_k: int, scale: float,
                      splits=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq (T, 1, D), dk, dv (Tk, 1, D)) of every segment given ``out`` and ``lse`` (T,) (as returned by
    :func:`segments_forward`, or the final ones of a merged attention)."""
    call = _cuda_backward if q_t1d.device.type == "cuda" else _cpu_backward
    dqs, dks, dvs = [], [], []
    for s0, s1, q0, q1, k0, k1 in splits or ((0, cu_q.numel() - 1, 0, q_t1d.shape[0], 0, k_t1d.shape[0]),):
        dq, dk, dv = call(do_t1d[q0:q1], q_t1d[q0:q1], k_t1d[k0:k1], v_t1d[k0:k1], out_t1d[q0:q1], lse_t[q0:q1],
                          cu_q[s0:s1 + 1] - q0, cu_k[s0:s1 + 1] - k0, max_q, max_k, scale)
        dqs.append(dq)
        dks.append(dk)
        dvs.append(dv)
    if len(dqs) == 1:
        return dqs[0], dks[0], dvs[0]
    return torch.cat(dqs), torch.cat(dks), torch.cat(dvs)


# ----------------------------------------------------------------------------- CUDA: torch's flash kernels
def _cuda_forward(q_t1d, k_t1d, v_t1d, cu_q, cu_k, max_q, max_k, scale):
    out, lse, *_ = torch.ops.aten._flash_attention_forward(q_t1d, k_t1d, v_t1d, cu_q, cu_k, max_q, max_k, 0.0, False,
                                                           False, scale=scale)
    return out, _check_lse(lse, q_t1d.shape[0])


def _cuda_backward(do_t1d, q_t1d, k_t1d, v_t1d, out_t1d, lse_t, cu_q, cu_k, max_q, max_k, scale):
    unused = torch.empty(0, device=q_t1d.device)
    rng = torch.zeros(2, dtype=torch.uint64, device=q_t1d.device)  # no dropout: never read
    return torch.ops.aten._flash_attention_backward(do_t1d, q_t1d, k_t1d, v_t1d, out_t1d, lse_t.float()[None],
                                                    cu_q, cu_k, max_q, max_k, 0.0, False, rng, unused, scale=scale)


# ----------------------------------------------------------------------------- the CPU stand-in
def _segments(cu_q: torch.Tensor, cu_k: torch.Tensor, rows_q: int, rows_k: int, max_q: int, max_k: int):
    """The non-empty segments, after checking what the CUDA kernels take on trust: offsets start at 0,
    never decrease, stay inside the buffers, and no segment is longer than ``max_q`` / ``max_k`` (a CUDA
    grid sized from a too small maximum would silently skip rows)."""
    bq, bk = cu_q.tolist(), cu_k.tolist()
    for name, b, rows, most in (("query", bq, rows_q, max_q), ("key", bk, rows_k, max_k)):
        lengths = [y - x for x, y in pairwise(b)]
        if len(b) != len(bq) or b[0] != 0 or b[-1] > rows or min(lengths, default=0) < 0 \
                or max(lengths, default=0) > most:
            raise RuntimeError(f"moc impl 'varlen': inconsistent {name} segments (offsets {b[:8]}..., "
                               f"{rows} rows, max {most})")
    for s in range(len(bq) - 1):
        if bq[s + 1] > bq[s]:
            if bk[s + 1] <= bk[s]:
                raise RuntimeError(f"moc impl 'varlen': segment {s} has queries {bq[s]}:{bq[s + 1]} but no keys")
            yield bq[s], bq[s + 1], bk[s], bk[s + 1]


def _cpu_forward(q_t1d, k_t1d, v_t1d, cu_q, cu_k, max_q, max_k, scale):
    T, _, D = q_t1d.shape
    out = torch.full((T, 1, D), float("nan"), dtype=q_t1d.dtype)
    lse = torch.full((T,), float("nan"), dtype=torch.float32 if q_t1d.dtype != torch.float64 else torch.float64)
    e = lambda t: t.transpose(0, 1)[None]  # (n, 1, D) -> (1, 1, n, D)
    for q0, q1, k0, k1 in _segments(cu_q, cu_k, T, k_t1d.shape[0], max_q, max_k):
        o, l_ = cpu_flash(e(q_t1d[q0:q1]), e(k_t1d[k0:k1]), e(v_t1d[k0:k1]), scale=scale)
        out[q0:q1] = o[0].transpose(0, 1)
        lse[q0:q1] = l_.reshape(-1).to(lse.dtype)
    return out, lse


def _cpu_backward(do_t1d, q_t1d, k_t1d, v_t1d, out_t1d, lse_t, cu_q, cu_k, max_q, max_k, scale):
    dq = torch.full_like(q_t1d, float("nan"))
    dk = torch.full_like(k_t1d, float("nan"))
    dv = torch.full_like(v_t1d, float("nan"))
    e = lambda t: t.transpose(0, 1)[None]
    for q0, q1, k0, k1 in _segments(cu_q, cu_k, q_t1d.shape[0], k_t1d.shape[0], max_q, max_k):
        g = cpu_flash_bwd(e(do_t1d[q0:q1]), e(q_t1d[q0:q1]), e(k_t1d[k0:k1]), e(v_t1d[k0:k1]), e(out_t1d[q0:q1]),
                          lse_t[q0:q1].to(q_t1d.dtype if q_t1d.dtype == torch.float64 else torch.float32)[None, None],
                          0.0, False, scale=scale)
        dq[q0:q1], dk[k0:k1], dv[k0:k1] = (t[0].transpose(0, 1) for t in g)
    return dq, dk, dv
