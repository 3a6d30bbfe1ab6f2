"""``svg`` against its independent float64 oracle (tests/oracle_peers.py, docs/specs/svg.md): the spatial and
temporal patterns, the per-head online choice from sampled queries' dense softmax mass, output, gradients,
pairs; inputs built so that both choices occur; errors."""

from __future__ import annotations

import random

import oracle
import oracle_peers
import pytest
import torch
from conftest import max_err, peer_cases, qkv, random_layout, seeded_grad_out

import mocbench

MIN_MARGIN = 1e-4
PARAMS = [dict(), dict(width=1.0, num_samples=5), dict(width=0.5, sink=False, num_samples=3),
          dict(width=1.5, num_samples=200), dict(width=3.0, sink=False)]
cases = peer_cases(PARAMS, seed=2200)



def inputs(i, params, layout):
    """Random q, k, v; in head 1 the queries and keys carry a strong code of their patch (same patch, any
    frame: large score), which favours the temporal pattern. Re-drawn while a choice is a near-tie."""
    shape = (1 + i % 2, 2, layout.num_tokens, 16)
    patch = layout.patch_id.clamp(min=0)
    code = torch.nn.functional.one_hot(patch % 16, 16).double() * (layout.patch_id >= 0)[:, None]
    for seed in range(500 + 43 * i, 600 + 43 * i):
        q, k, v = qkv(shape, seed, torch.float64)
        q[:, 1] = 0.5 * q[:, 1] + 2.0 * code
        k[:, 1] = 0.5 * k[:, 1] + 2.0 * code
        q, k = q.float(), k.float()
        mask, margin = oracle_peers.svg_mask_and_margin(q, k, layout, **params)
        if margin >= MIN_MARGIN:
            return q, k, v.float(), mask
    raise AssertionError("no input without a near-tie")


@cases
def test_svg_pattern_and_pairs_equal_oracle(i, params, layout):
    q, k, _, want = inputs(i, params, layout)
    backend = mocbench.get_backend("svg", **params)
    assert torch.equal(backend.attention_pattern(q, k, layout), want)
    assert backend.stats(q, k, layout).pairs == oracle.pairs(want)
    assert backend.estimate(layout, head_dim=16, batch=q.shape[0], heads=2).pairs >= oracle.pairs(want)


@cases
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_svg_output_and_gradients_match_oracle(i, params, layout, dtype):
    q, k, v, mask = inputs(i, params, layout)
    q, k, v = (t.to(dtype).requires_grad_() for t in (q, k, v))
    out = mocbench.get_backend("svg", **params)(q, k, v, layout)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert max_err(out, oracle.attend(q, k, v, mask)) <= tol
    g = seeded_grad_out(q.shape, i)
    (out.double() * g).sum().backward()
    q0, k0, v0 = (t.detach().double().requires_grad_() for t in (q, k, v))
    (oracle.attend(q0, k0, v0, mask) * g).sum().backward()
    for n, a, b in (("q", q.grad, q0.grad), ("k", k.grad, k0.grad), ("v", v.grad, v0.grad)):
        assert max_err(a, b) <= tol, f"grad {n}"


def test_svg_both_patterns_are_chosen_somewhere():
    """Guards the cases: the crafted head picks temporal in some case, random heads spatial in some."""
    chosen = set()
    for i, params, layout in cases.args[1]:  # the parametrized cases
        q, k, _, _ = inputs(i, params, layout)
        chosen |= set(mocbench.get_backend("svg", **params).prepare(q, k, layout).temporal.flatten().tolist())
    assert chosen == {False, True}


@pytest.mark.parametrize("name,params", [("spatial", 0), ("temporal", 1)])
def test_svg_static_patterns_equal_oracle(name, params):
    layout = random_layout(random.Random(77), "interleaved", geometry=True)
    idx = torch.arange(layout.num_tokens)
    band = mocbench.get_backend("svg", width=1.5)._bands()[params]
    assert torch.equal(band.predicate(layout, idx[:, None], idx[None, :]), oracle_peers.svg_masks(layout, width=1.5)[params])


@pytest.mark.parametrize("params,match", [
    (dict(width=0.0), "width must be a finite number of frames > 0, got 0.0"),
    (dict(num_samples=0), "num_samples must be >= 1 query, got 0"),
])
def test_svg_bad_params_name_the_value(params, match):
    with pytest.raises(ValueError, match=match):
        mocbench.get_backend("svg", **params)


def test_svg_layout_caches_do_not_leak_between_widths():
    """Plans and tables are cached on the layout per parameter set: two widths on one layout each match
    the oracle (a cache keyed without the width once gave the first width's band to the second)."""
    layout = random_layout(random.Random(78), "interleaved", geometry=True)
    idx = torch.arange(layout.num_tokens)
    for width in (3.0, 0.5, 3.0):
        for which, band in enumerate(mocbench.get_backend("svg", width=width)._bands()):
            want = oracle_peers.svg_masks(layout, width=width)[which]
            assert torch.equal(band.predicate(layout, idx[:, None], idx[None, :]), want), (width, which)
            assert band.group_plan(layout).pairs == oracle.pairs(want)
