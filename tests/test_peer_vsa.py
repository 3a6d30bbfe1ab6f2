"""``vsa`` against its independent float64 oracle (tests/oracle_peers.py, docs/specs/vsa.md): pooled
coarse attention, top-k cube selection over the whole stream, fine attention inside the chosen cubes,
the sum of both; output, gradients (through the fine and the pooled coarse stage), pairs; errors."""

from __future__ import annotations

import oracle
import oracle_peers
import pytest
import torch
from conftest import max_err, peer_cases, qkv, seeded_grad_out

import mocbench
from mocbench import TokenLayout

MIN_MARGIN = 1e-4
PARAMS = [dict(cube="1,1,1", top_k=3), dict(cube="2,2,2", top_k=2), dict(cube="1,2,3", top_k=1, coarse_gate=0.5),
          dict(cube="2,1,2", top_k=4, coarse_gate=0.0), dict(cube="3,3,4", top_k=50)]
cases = peer_cases(PARAMS, seed=1900)



def inputs(i, params, layout):
    shape = (1 + i % 2, 2, layout.num_tokens, 8)
    for seed in range(300 + 41 * i, 400 + 41 * i):
        q, k, v = qkv(shape, seed)
        if oracle_peers.vsa(q, k, v, layout, **params)[2] >= MIN_MARGIN:
            return q, k, v
    raise AssertionError("no input without a near-tie")


@cases
def test_vsa_fine_pattern_and_pairs_equal_oracle(i, params, layout):
    q, k, v = inputs(i, params, layout)
    _, want, _ = oracle_peers.vsa(q, k, v, layout, **params)
    backend = mocbench.get_backend("vsa", **params)
    assert torch.equal(backend.attention_pattern(q, k, layout), want)
    assert backend.stats(q, k, layout).pairs == oracle.pairs(want)


@cases
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_vsa_output_and_gradients_match_oracle(i, params, layout, dtype):
    """fine + coarse_gate * coarse equals the oracle in float64 (f32 1e-5); gradients flow through both."""
    q, k, v = (t.to(dtype).requires_grad_() for t in inputs(i, params, layout))
    backend = mocbench.get_backend("vsa", **params)
    out = backend(q, k, v, layout)
    q0, k0, v0 = (t.detach().double().requires_grad_() for t in (q, k, v))
    want, _, _ = oracle_peers.vsa(q0, k0, v0, layout, **params)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert out.dtype == dtype and max_err(out, want) <= tol
    assert max_err(backend.float64_reference(q, k, v, layout), want) <= 1e-10
    g = seeded_grad_out(q.shape, i)
    (out.double() * g).sum().backward()
    (want * g).sum().backward()
    for n, a, b in (("q", q.grad, q0.grad), ("k", k.grad, k0.grad), ("v", v.grad, v0.grad)):
        assert max_err(a, b) <= tol, f"grad {n}"


def test_vsa_estimate_equals_measured_with_full_cubes():
    """Frames and shots multiples of the cube: every query attends K cubes of 8 tokens exactly."""
    layout = TokenLayout.multi_shot(text_tokens=[2, 3], frames=[4, 2], frame_shape=(2, 4))
    b = mocbench.get_backend("vsa", cube="2,2,2", top_k=3)
    q, k, _ = qkv((2, 2, layout.num_tokens, 8), 5)
    assert b.estimate(layout, head_dim=8, batch=2, heads=2) == b.stats(q, k, layout)


def test_vsa_top_k_reaches_other_shots():
    """Selection is over every cube of the stream: with top_k = all cubes a video query sees every video token."""
    layout = TokenLayout.multi_shot(text_tokens=[1, 1], frames=[2, 2], frame_shape=(1, 2))
    q, k, _ = qkv((1, 1, layout.num_tokens, 4), 6)
    pat = mocbench.get_backend("vsa", cube="1,1,2", top_k=4).attention_pattern(q, k, layout)[0, 0]
    assert bool(pat[1:5].all()) and bool(pat[6:].all())


@pytest.mark.parametrize("params,match", [
    (dict(cube="4,4"), "cube must be 3 positive ints 'frames,rows,columns'"),
    (dict(top_k=0), "top_k must be >= 1 cube, got 0"),
    (dict(coarse_gate=-1.0), "coarse_gate must be a finite float >= 0, got -1.0"),
])
def test_vsa_bad_params_name_the_value(params, match):
    with pytest.raises(ValueError, match=match):
        mocbench.get_backend("vsa", **params)
