"""Fixed sparse baselines (moc-spec §8) against the independent float64 oracle (tests/oracle.py).

``shot_local`` (text_anchor on/off), ``frame_window`` (window 0..3, text_anchor on/off) and
``strided`` (stride 1..4 x chunkings shot/frame/frames:2/tokens:3/fixed:5), each on random
layouts: pattern, float32/float64 output, gradients, measured stats and analytic estimate.
"""

from __future__ import annotations

import random

import oracle
import pytest
import torch
from conftest import case_data, fixed_sparse_cases, kind_of, max_err, qkv, random_layout, seeded_grad_out

import mocbench
from mocbench import TokenLayout

CASES = fixed_sparse_cases(reps=2)
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
GRAD_TOL = {torch.float64: 1e-9, torch.float32: 1e-5}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
cases_param = pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])



# --------------------------------------------------------------------------- the oracle itself
def test_oracle_frame_window_hand_example():
    """Guards the oracle: T0[1] V0[3 frames x 1] T1[1] V1[2 frames x 1], window 1."""
    layout = TokenLayout.multi_shot(text_tokens=[1, 1], frames=[3, 2], tokens_per_frame=1)
    # positions: 0=T0, 1..3 = V0 frames 0..2, 4=T1, 5..6 = V1 frames 0..1
    m = oracle.frame_window_mask(layout, window=1, text_anchor=True)
    assert m[2].nonzero().flatten().tolist() == [0, 1, 2, 3, 4]  # all text + frames 0..2 of shot 0
    assert m[1].nonzero().flatten().tolist() == [0, 1, 2, 4]
    assert m[0].nonzero().flatten().tolist() == [0, 4]  # caption query: the text anchor only
    off = oracle.frame_window_mask(layout, window=0, text_anchor=False)
    assert off[4].nonzero().flatten().tolist() == [4]  # caption query: its own caption only
    assert off[5].nonzero().flatten().tolist() == [5]


def test_oracle_strided_hand_example():
    """Guards the oracle: strided:2 over frame chunks [T0] [f0] [f1] [f2] keeps chunks 0 and 2 + own."""
    layout = TokenLayout.single_shot(text_tokens=2, frames=3, tokens_per_frame=2)
    # chunks: 0 = {0,1} text, 1 = {2,3}, 2 = {4,5}, 3 = {6,7}
    m = oracle.strided_mask(layout, stride=2, chunking="frame", text_anchor=False)
    assert m[6].nonzero().flatten().tolist() == [0, 1, 4, 5, 6, 7]
    assert m[2].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5]


# --------------------------------------------------------------------------- backends vs oracle
@cases_param
def test_fixed_sparse_attention_pattern_equals_oracle(case):
    """attention_pattern is the layout-only pattern of §8 (same for every batch and head)."""
    d = case_data(case)
    pat = case.make_backend().attention_pattern(d.q, d.k, case.layout)
    assert pat.dtype == torch.bool and tuple(pat.shape) == tuple(d.mask.shape)
    diff = (pat != d.mask).nonzero()
    assert diff.numel() == 0, f"{len(diff)} (b,h,i,j) differ, first {diff[:5].tolist()} ({case.layout.describe()})"


@DTYPES
@cases_param
def test_fixed_sparse_output_matches_float64_oracle(case, dtype):
    """Output = exact masked softmax over the pattern (f32 within 1e-5, f64 within 1e-10)."""
    d = case_data(case)
    q, k, v = (t.to(dtype) for t in (d.q, d.k, d.v))
    backend = case.make_backend()
    out = backend(q, k, v, case.layout)
    assert out.shape == q.shape and out.dtype == dtype
    err = max_err(out, oracle.attend(q, k, v, d.mask))
    assert err <= TOL[dtype], f"max abs error {err:.3g} > {TOL[dtype]}"
    assert max_err(backend.forward(q, k, v, backend.prepare(q, k, case.layout)), out) == 0.0


@DTYPES
@cases_param
def test_fixed_sparse_gradients_match_oracle_autograd(case, dtype):
    """dL/dq, dL/dk, dL/dv equal autograd through the oracle's float64 masked softmax."""
    d = case_data(case)
    g = seeded_grad_out(case.shape, case.seed)
    q, k, v = (t.detach().clone().to(dtype).requires_grad_() for t in (d.q, d.k, d.v))
    out = case.make_backend()(q, k, v, case.layout)
    (out.to(torch.float64) * g).sum().backward()
    q0, k0, v0 = (t.detach().clone().to(torch.float64).requires_grad_() for t in (d.q, d.k, d.v))
    (oracle.attend(q0, k0, v0, d.mask) * g).sum().backward()
    for name, got, want in (("q", q.grad, q0.grad), ("k", k.grad, k0.grad), ("v", v.grad, v0.grad)):
        assert got is not None and got.dtype == dtype, f"no {name}.grad"
        err = max_err(got, want)
        assert err <= GRAD_TOL[dtype], f"grad {name}: max abs error {err:.3g} > {GRAD_TOL[dtype]}"


@cases_param
def test_fixed_sparse_stats_match_oracle_and_estimate_is_exact(case):
    """stats().pairs = the oracle's attended-pair count; estimate(layout) (no tensors) and
    mocbench.estimate(...) equal the measured stats exactly (patterns depend on the layout only)."""
    d = case_data(case)
    backend = case.make_backend()
    B, H, L, D = case.shape
    measured = backend.stats(d.q, d.k, case.layout)
    assert (measured.batch, measured.heads, measured.tokens, measured.head_dim) == (B, H, L, D)
    assert measured.pairs == oracle.pairs(d.mask)
    assert measured.attention_flops == 4 * D * oracle.pairs(d.mask)
    assert measured.sparsity == pytest.approx(1 - oracle.pairs(d.mask) / (B * H * L * L), abs=1e-12)
    assert backend.estimate(case.layout, head_dim=D, batch=B, heads=H) == measured
    assert mocbench.estimate(case.layout, case.backend, head_dim=D, batch=B, heads=H, **case.kwargs) == measured


# --------------------------------------------------------------------------- cross-backend identities
SHOT_LOCAL_EQ = [pytest.param(random_layout(random.Random(800 + i), kind_of(i)), ta,
                              id=f"{kind_of(i)}-{i}-ta{int(ta)}")
                 for i in range(8) for ta in (True, False)]


@pytest.mark.parametrize("layout,text_anchor", SHOT_LOCAL_EQ)
def test_shot_local_equals_moc_top_k_0_local_shot(layout, text_anchor):
    """moc-spec §8: shot_local is MoC with top_k = 0 and the shot local anchor."""
    q, k, v = qkv((1, 2, layout.num_tokens, 8), 3, torch.float64)
    sl = mocbench.get_backend("shot_local", text_anchor=text_anchor)
    moc = mocbench.get_backend("moc", top_k=0, local_anchor="shot", text_anchor=text_anchor)
    assert torch.equal(sl.attention_pattern(q, k, layout), moc.attention_pattern(q, k, layout))
    assert max_err(sl(q, k, v, layout), moc(q, k, v, layout)) <= 1e-12
    assert sl.stats(q, k, layout).pairs == moc.stats(q, k, layout).pairs


@pytest.mark.parametrize("case", CASES[:10], ids=[c.id for c in CASES[:10]])
def test_fixed_sparse_custom_scale_matches_oracle(case):
    """scale= replaces 1/sqrt(head_dim) in the softmax."""
    d = case_data(case)
    out = case.make_backend()(d.q.double(), d.k.double(), d.v.double(), case.layout, scale=0.37)
    assert max_err(out, oracle.attend(d.q, d.k, d.v, d.mask, scale=0.37)) <= 1e-10
