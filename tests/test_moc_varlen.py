"""MoC impl 'varlen': the decomposition on variable-length flash segments, tested on CPU.

Everything but the segment kernel (index building, offsets, merge, backward assembly) is the same code
on CPU and CUDA; on CPU the kernel is a stand-in (``varlen_kernels``) that also checks what the CUDA
kernels take on trust (offsets, longest segments) and leaves rows no segment writes as NaN, so a read of
one shows up here. Guarded:
* forward and gradients equal the independent float64 oracle (tests/oracle.py) on random layouts chosen
  to stress this impl: captions gathered into other shots' anchor keys, ``fixed:m`` chunks that span
  shots and straddle captions (split into units), every anchor setting, causal, top_k 0 to > #chunks,
  batch and heads > 1 (tests/test_oracle_moc.py also runs its 80 cases through this impl);
* segment lists cut into several kernel calls; hand-made plans (duplicate, empty and wholly anchored
  slots); units no query routed to; half types within the declared tolerance;
* which inputs are views and which are gathered; the CUDA declaration and ``auto`` order; the kernel
  named in result rows; the committed table of where impls were measured.
Marked ``gpu``: the same checks on CUDA (bf16/fp16, head_dim 64/128, forward and gradients).
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import oracle
import pytest
import torch
from conftest import MOC_RULES, draw_inputs, random_layout, seeded_grad_out

import mocbench
from mocbench import TokenLayout
from mocbench.backends.moc import varlen, varlen_kernels
from mocbench.backends.moc.impls import AUTO_ORDER, IMPLS
from mocbench.backends.moc.measured import MEASURED, measured_note

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("interleaved", "segments", "front", "back", "single")
N_CASES = 30


def _case(i: int):
    """Layout, params and shape of case i: every kind x every rule, anchors, causal and top_k varied."""
    rng = random.Random(31_000 + i)
    kind = KINDS[i % len(KINDS)]
    rule = MOC_RULES[i % len(MOC_RULES)]
    layout = random_layout(rng, kind)
    C = len(oracle.chunks(layout, rule))
    top_k = (0, C + rng.randint(0, 2), rng.randint(1, max(1, C - 1)), 1, 2)[i % 5]
    params = {"top_k": top_k, "chunking": rule, "text_anchor": (i // 2) % 2 == 0,
                  "local_anchor": (None, "shot", "chunk")[(i // 3) % 3], "causal": (i // 5) % 2 == 0}
    shape = (rng.choice((1, 2)), rng.choice((1, 2, 3)), layout.num_tokens, rng.choice((8, 16)))
    return layout, params, shape


def _check_against_oracle(layout, params, shape, seed, *, dtype=torch.float64, device="cpu", tol=1e-10,
                          grad_tol=1e-9):
    q, k, v, seed = draw_inputs(shape, seed, layout, params, torch.float64)
    mask = oracle.moc_mask(q, k, layout, **params)
    g = seeded_grad_out(shape, seed)
    qs, ks, vs = (t.detach().clone().to(device, dtype).requires_grad_() for t in (q, k, v))
    backend = mocbench.get_backend("moc", impl="varlen", **params)
    plan = backend.prepare(qs.detach(), ks.detach(), layout)
    out = backend.forward(qs, ks, vs, plan)
    assert out.dtype == dtype and out.shape == q.shape
    (out.double() * g.to(device)).sum().backward()
    q0, k0, v0 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref = oracle.attend(q0, k0, v0, mask)
    (ref * g).sum().backward()
    assert (out.detach().double().cpu() - ref.detach()).abs().max().item() <= tol
    for name, got, want in (("q", qs.grad, q0.grad), ("k", ks.grad, k0.grad), ("v", vs.grad, v0.grad)):
        err = (got.double().cpu() - want).abs().max().item()
        assert err <= grad_tol, f"d{name}: max abs error {err:.3g} > {grad_tol}"
    return plan


@pytest.mark.parametrize("i", range(N_CASES))
def test_forward_and_gradients_match_the_float64_oracle(i):
    layout, params, shape = _case(i)
    _check_against_oracle(layout, params, shape, 4000 + 13 * i)


def _spanning_layout():
    # 2 frames x 5 tokens per shot: fixed:7 chunks straddle every shot boundary and the captions between
    return TokenLayout.multi_shot(text_tokens=[3, 2, 4], frames=[2, 2, 2], tokens_per_frame=5)


@pytest.mark.parametrize("text_anchor", [True, False])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("local_anchor", ["shot", "chunk"])
def test_fixed_chunks_spanning_shots_are_split_into_units(text_anchor, causal, local_anchor):
    """A fixed:7 chunk across a shot boundary is two units under the shot anchor (the query's own part
    is an anchor, the other part routed); under the chunk anchor it stays one unit."""
    layout = _spanning_layout()
    params = {"top_k": 3, "chunking": "fixed:7", "local_anchor": local_anchor, "text_anchor": text_anchor,
              "causal": causal}
    plan = _check_against_oracle(layout, params, (2, 2, layout.num_tokens, 8), 17)
    lay = plan.impl_state.lay
    chunks = layout.chunks("fixed:7").num_chunks
    assert lay.sort_index is not None  # fixed chunks skip the captions: keys are gathered chunk-sorted
    assert (lay.num_units > chunks) == (local_anchor == "shot")


def test_segment_lists_longer_than_one_call_are_split(monkeypatch):
    """More segments than one CUDA grid takes (65535) are cut into several calls at host offsets; the
    same cut runs on CPU, so the offsets are checked here (at a limit of 3 segments)."""
    monkeypatch.setattr(varlen, "MAX_SEGMENTS", 3)
    layout = TokenLayout.multi_shot(text_tokens=[2, 3], frames=[3, 2], tokens_per_frame=3)
    params = {"top_k": 2, "chunking": "frame", "causal": False}
    plan = _check_against_oracle(layout, params, (2, 2, layout.num_tokens, 8), 5)
    state = plan.impl_state
    assert state.anchors.splits is not None and len(state.anchors.splits) >= 2
    assert state.routed is not None and state.routed.splits is not None and len(state.routed.splits) >= 3


def _inputs(shape, seed, dtype=torch.float64, grad=False):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_(grad) for _ in range(3))


def _vs_reference(plan, q, k, v, tol=1e-10):
    ref = IMPLS["reference"].forward(q, k, v, plan)
    out = IMPLS["varlen"].forward(q, k, v, plan)
    assert (out - ref).abs().max().item() <= tol
    g = torch.randn(q.shape, generator=torch.Generator().manual_seed(1), dtype=q.dtype)
    for name, a, b in zip("qkv", torch.autograd.grad(ref, (q, k, v), g), torch.autograd.grad(out, (q, k, v), g)):
        assert (a - b).abs().max().item() <= 10 * tol, f"d{name}"


@pytest.mark.parametrize("local_anchor", ["shot", "chunk"])
def test_hand_made_plan_with_duplicate_empty_and_anchored_slots(local_anchor):
    """selected with repeated chunks, -1 anywhere, and chunks wholly covered by the query's anchors (its
    own chunk or shot, a caption): the result is still attention over anchors U routed chunks, each key
    once, as the mask reference computes it."""
    layout = TokenLayout.multi_shot(text_tokens=[2, 2, 1], frames=[3, 2, 2], tokens_per_frame=3)
    q, k, v = _inputs((1, 2, layout.num_tokens, 8), 21, grad=True)
    plan = mocbench.get_backend("moc", impl="reference", top_k=3, causal=False, local_anchor=local_anchor).prepare(
        q.detach(), k.detach(), layout)
    L, C = layout.num_tokens, plan.structure.num_chunks
    ar = torch.arange(L)
    sel = plan.selected.clone()
    sel[..., 1] = torch.where(ar % 3 == 0, sel[..., 0], sel[..., 1])  # duplicates
    sel[..., 0] = torch.where(ar % 4 == 1, -1, sel[..., 0])  # empty slots
    own = plan.structure.chunks.chunk_id
    sel[..., 2] = torch.where(ar % 2 == 0, own, torch.zeros_like(own) if C else own)  # own chunk; the first caption
    plan.selected = sel
    _vs_reference(plan, q, k, v)


def test_units_no_query_routed_to_get_zero_gradients():
    """With causal top_k=1 routing some units get no query; the stand-in leaves their key gradients NaN,
    so this passes only because the impl zeroes them (what it does with the CUDA kernel's output too)."""
    layout = TokenLayout.multi_shot(text_tokens=[2, 2, 2], frames=[3, 3, 3], tokens_per_frame=4)
    plan = _check_against_oracle(layout, {"top_k": 1, "chunking": "frame", "causal": True},
                                 (1, 2, layout.num_tokens, 8), 9)
    assert bool(plan.impl_state.unused_keys.any())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_within_the_declared_tolerance(dtype):
    """bf16/fp16 (what CUDA runs): partials in the input dtype, merged in float32, gradients too."""
    layout, params, shape = _case(7)
    q, k, v = _inputs(shape, 9, dtype, grad=True)
    backend = mocbench.get_backend("moc", impl="varlen", **params)
    plan = backend.prepare(q.detach(), k.detach(), layout)
    out = backend.forward(q, k, v, plan)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = IMPLS["reference"].forward(q64, k64, v64, plan)
    assert out.dtype == dtype
    assert (out.double() - ref).abs().max().item() <= backend.tolerance[dtype]
    g = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = torch.autograd.grad(out, (q, k, v), g.to(dtype))
    want = torch.autograd.grad(ref, (q64, k64, v64), g)
    for name, a, b in zip("qkv", got, want):
        rel = ((a.double() - b).norm() / b.norm()).item()
        assert rel <= 2e-2, f"d{name}: relative error {rel:.3g}"


def test_views_where_contiguous_and_gathers_where_not():
    """Queries and keys are views of q, k, v wherever the segments tile the stream in order; captions of
    other shots (anchor keys) and chunks that skip tokens (fixed:m) are gathered."""
    def lay(layout, **params):
        q = torch.randn(1, 1, layout.num_tokens, 8)
        return mocbench.get_backend("moc", impl="varlen", **params).prepare(q, q, layout).impl_state.lay

    inter = TokenLayout.multi_shot(text_tokens=[2, 2], frames=[2, 2], tokens_per_frame=4)
    a = lay(inter, top_k=1, chunking="frame")  # shot anchor + captions of the other shot
    assert a.aq_index is None and a.ak_index is not None and a.sort_index is None
    b = lay(inter, top_k=1, chunking="frame", text_anchor=False)  # shot anchor alone: all views
    assert b.aq_index is None and b.ak_index is None and b.sort_index is None
    c = lay(inter, top_k=1, chunking="fixed:3", local_anchor="chunk", text_anchor=False)
    assert c.aq_index is not None and c.sort_index is not None  # a fixed chunk skips the caption between shots
    d = lay(TokenLayout.single_shot(text_tokens=0, frames=3, tokens_per_frame=4), top_k=1, chunking="frame")
    assert d.aq_index is None and d.ak_index is None and d.sort_index is None


def test_cuda_declaration_and_auto_order():
    """On CUDA varlen takes what torch's flash kernels take (bf16/fp16, head_dim a multiple of 8 up to
    256, compute capability 8.0+); on CPU (the stand-in) any float type. It is CUDA's first choice
    until a GPU has measured the impls."""
    impl = IMPLS["varlen"]
    cuda = " ".join(impl.not_supported_reasons(device="cuda", dtype=torch.float32, head_dim=12))
    assert "dtype float32 not supported (supports bfloat16, float16)" in cuda and "multiple of 8" in cuda
    assert "head_dim 264 > max 256" in " ".join(impl.not_supported_reasons(device="cuda", head_dim=264))
    assert impl.not_supported_reasons(device="cpu", dtype=torch.float64, head_dim=12, requires_grad=True) == []
    assert AUTO_ORDER["cuda"][0] == "varlen"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_float32_is_refused_by_varlen_with_the_reason():
    backend = mocbench.get_backend("moc", impl="varlen", top_k=1)
    reasons = " ".join(backend.not_supported_reasons(device="cuda", dtype=torch.float32, head_dim=64))
    assert "impl 'varlen'" in reasons and "float32 not supported" in reasons


def test_rows_name_the_kernel(monkeypatch):
    """Result rows record the kernel behind varlen: torch's FA2 by default, FA3/FA4 when activated."""
    impl = IMPLS["varlen"]
    assert impl.label("cpu") == "varlen(cpu)"
    assert mocbench.get_backend("moc", impl="varlen").implementation("cpu") == "varlen(cpu)"
    monkeypatch.setattr(torch.nn.attention, "current_flash_attention_impl", lambda: None, raising=False)
    assert impl.label("cuda") == "varlen(fa2)"
    monkeypatch.setattr(torch.nn.attention, "current_flash_attention_impl", lambda: "FA3", raising=False)
    assert impl.label("cuda") == "varlen(fa3)"
    assert IMPLS["gather"].label("cpu") == "gather"


def test_measured_table_matches_its_stores():
    """Every row of measured.py is backed by ok rows of that impl on that device in the named store; no
    CUDA impl claims a GPU measurement without one, and the listing says so."""
    for m in MEASURED:
        path = ROOT / m.store
        assert path.is_file(), m.store
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["status"] == "ok" and r["impl"].split("(")[0] == m.impl]
        assert rows, f"{m.store} has no ok rows of impl {m.impl}"
        assert all(r["device"] == m.device_type for r in rows)
        assert any(r["finished_at"].startswith(m.date) for r in rows)
        assert any(m.device in (r["env_cpu"], r["env_gpu"]) for r in rows)
    assert measured_note("varlen", ("cuda", "cpu")) == "not yet measured on a GPU"
    listing = {r["impl"]: r["measured"] for r in mocbench.get_backend("moc").implementations(["cpu"])}
    assert listing["varlen"] == "not yet measured on a GPU" and "results/cpu_moc_32k" in listing["fused"]


def test_cpu_stand_in_refuses_segments_longer_than_declared():
    """The stand-in checks the host numbers a CUDA grid is sized from, so a wrong maximum fails here."""
    q = torch.randn(5, 1, 8)
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="inconsistent query segments"):
        varlen_kernels.segments_forward(q, q, q, cu, cu, 2, 3, 1.0)


@pytest.mark.skipif(not (os.path.exists("/proc/self/clear_refs") and sys.platform.startswith("linux")),
                    reason="measures VmHWM through /proc/self/clear_refs (Linux only)")
def test_workspace_bounds_the_measured_peak_of_a_cell():
    """The memory guard's estimate (inputs, gradients, ``varlen_workspace_bytes``, validation) bounds the
    peak resident growth of a bf16 forward+backward cell with gathered keys and spanning fixed:300 chunks
    (tests/memprobe.py, as in test_bench_memory), and is not absurdly above it."""
    spec = {"backend": "moc", "params": {"impl": "varlen", "chunking": "fixed:300", "top_k": 3}, "threads": 2,
            "workload": {"shots": [4], "frames": [4], "tokens_per_frame": 256, "text_tokens": 16, "batch": 1,
                         "heads": 4, "head_dim": 64, "dtype": "bfloat16", "passes": ["fwd+bwd"]}}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "memprobe.py"), json.dumps(spec)],
                          check=False, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["status"] == "ok", r["reason"]
    est, measured, mib = r["est_mem_gib"] * (1 << 30), r["growth_bytes"], 1 << 20
    assert measured > 20 * mib
    assert est + 16 * mib >= measured, f"estimate {est / mib:.1f} MiB < measured peak {measured / mib:.1f} MiB"
    assert est <= 3 * measured + 128 * mib


def test_cuda_calls_bind_to_torchs_flash_op_schemas():
    """The CUDA path's calls of aten._flash_attention_forward/backward, run on meta tensors (torch's meta
    kernels: argument order, keywords, output shapes; no GPU needed): one log-sum-exp per packed row, and
    gradients shaped like the packed queries and keys."""
    T, Tk, D = 10, 7, 64
    q = torch.empty(T, 1, D, device="meta", dtype=torch.bfloat16)
    k = torch.empty(Tk, 1, D, device="meta", dtype=torch.bfloat16)
    cu_q, cu_k = (torch.empty(3, device="meta", dtype=torch.int32) for _ in range(2))
    out, lse = varlen_kernels._cuda_forward(q, k, k, cu_q, cu_k, 6, 4, 0.125)
    assert out.shape == (T, 1, D) and out.dtype == torch.bfloat16 and lse.shape == (T,) and lse.dtype == torch.float32
    dq, dk, dv = varlen_kernels._cuda_backward(q, q, k, k, out, lse, cu_q, cu_k, 6, 4, 0.125)
    assert dq.shape == (T, 1, D) and dk.shape == dv.shape == (Tk, 1, D)


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("params", [{"top_k": 2, "chunking": "frame"},
                                    {"top_k": 3, "chunking": "fixed:40", "local_anchor": "shot", "causal": False},
                                    {"top_k": 2, "chunking": "tokens:48", "local_anchor": "chunk",
                                     "text_anchor": False}],
                         ids=["frame", "fixed-spanning", "tokens-chunk-anchor"])
def test_varlen_on_cuda_matches_float64_reference(dtype, head_dim, params):
    """torch's flash kernels behind the same decomposition: output and gradients against the float64
    mask reference on the same plan (so routing ties cannot differ), within the dtype's tolerance."""
    layout = TokenLayout.multi_shot(text_tokens=[16, 12, 8], frames=[3, 2, 3], tokens_per_frame=32)
    backend = mocbench.get_backend("moc", impl="varlen", **params)
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 4, layout.num_tokens, head_dim, generator=g).to("cuda", dtype).requires_grad_()
               for _ in range(3))
    plan = backend.prepare(q.detach(), k.detach(), layout)
    assert plan.impl == "varlen" and backend.implementation("cuda").startswith("varlen(")
    out = backend.forward(q, k, v, plan)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = IMPLS["reference"].forward(q64, k64, v64, plan)
    assert (out.double() - ref).abs().max().item() <= backend.tolerance[dtype]
    dout = torch.randn(out.shape, generator=g).to("cuda", torch.float64)
    got = torch.autograd.grad(out, (q, k, v), dout.to(dtype))
    want = torch.autograd.grad(ref, (q64, k64, v64), dout)
    for name, a, b in zip("qkv", got, want):
        assert bool(torch.isfinite(a).all()), f"d{name} has non-finite values"
        rel = ((a.double() - b).norm() / b.norm()).item()
        assert rel <= 2e-2, f"d{name}: relative error {rel:.3g}"
