"""``vmoba`` against its independent float64 oracle (tests/oracle_peers.py, docs/specs/vmoba.md): the
1D/2D/3D partition by layer, threshold and top-k block selection per query, pattern, float32/float64
output, gradients, measured pairs; analytic = measured where the spec says so; errors."""

from __future__ import annotations

import oracle
import oracle_peers
import pytest
import torch
from conftest import max_err, peer_cases, qkv, seeded_grad_out

import mocbench
from mocbench import TokenLayout

MIN_MARGIN = 1e-4
PARAMS = [
    dict(layer=0, select="threshold"),
    dict(layer=1, select="threshold", spatial_chunk="1,2"),
    dict(layer=2, select="threshold", st_chunk="2,1,2", threshold=0.6),
    dict(layer=3, select="topk", top_k=2, temporal_chunk=2),
    dict(layer=4, select="topk", top_k=3, spatial_chunk="2,1"),
    dict(layer=5, select="topk", top_k=1, st_chunk="1,2,2"),
    dict(layer=2, select="topk", top_k=9, st_chunk="1,1,2"),
    dict(layer=0, select="threshold", threshold=0.9),
]
cases = peer_cases(PARAMS, seed=1600)



def inputs(i, params, layout):
    """q, k, v with every routing decision at least MIN_MARGIN from a tie (else the next seed)."""
    shape = (1 + i % 2, 2, layout.num_tokens, 8)
    for seed in range(100 + 37 * i, 200 + 37 * i):
        q, k, v = qkv(shape, seed)
        mask, margin = oracle_peers.vmoba_mask_and_margin(q, k, layout, **params)
        if margin >= MIN_MARGIN:
            return q, k, v, mask
    raise AssertionError("no input without a near-tie")


@cases
def test_vmoba_pattern_and_stats_equal_oracle(i, params, layout):
    q, k, _, want = inputs(i, params, layout)
    backend = mocbench.get_backend("vmoba", **params)
    got = backend.attention_pattern(q, k, layout)
    diff = (got != want).nonzero()
    assert diff.numel() == 0, f"{len(diff)} entries differ, first {diff[:4].tolist()} ({layout.describe()})"
    assert backend.stats(q, k, layout).pairs == oracle.pairs(want)


@cases
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_vmoba_output_and_gradients_match_oracle(i, params, layout, dtype):
    """Partials merged by log-sum-exp equal the float64 masked softmax over the oracle's pattern."""
    q, k, v, mask = inputs(i, params, layout)
    q, k, v = (t.to(dtype).requires_grad_() for t in (q, k, v))
    out = mocbench.get_backend("vmoba", **params)(q, k, v, layout)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert out.dtype == dtype and max_err(out, oracle.attend(q, k, v, mask)) <= tol
    g = seeded_grad_out(q.shape, i)
    (out.double() * g).sum().backward()
    q0, k0, v0 = (t.detach().double().requires_grad_() for t in (q, k, v))
    (oracle.attend(q0, k0, v0, mask) * g).sum().backward()
    for n, a, b in (("q", q.grad, q0.grad), ("k", k.grad, k0.grad), ("v", v.grad, v0.grad)):
        assert max_err(a, b) <= tol, f"grad {n}"


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_vmoba_topk_estimate_equals_measured_on_equal_blocks(layer):
    """topk with equal-sized blocks: analytic pairs, routing and pooling FLOPs equal the measured ones."""
    layout = TokenLayout.multi_shot(text_tokens=[2, 3], frames=[4, 4], frame_shape=(2, 4))
    b = mocbench.get_backend("vmoba", layer=layer, select="topk", top_k=2, temporal_chunk=2, spatial_chunk="1,2",
                             st_chunk="2,1,2")
    q, k, _ = qkv((2, 2, layout.num_tokens, 8), 3)
    assert b.estimate(layout, head_dim=8, batch=2, heads=2) == b.stats(q, k, layout)


def test_vmoba_threshold_estimate_is_a_lower_bound():
    layout = TokenLayout.multi_shot(text_tokens=[2, 3], frames=[4, 4], frame_shape=(2, 4))
    b = mocbench.get_backend("vmoba", layer=0, threshold=0.9)
    q, k, _ = qkv((1, 2, layout.num_tokens, 8), 4)
    assert b.estimate(layout, head_dim=8, heads=2).pairs <= b.stats(q, k, layout).pairs


def test_vmoba_layer_cycles_the_partition():
    layout = TokenLayout.single_shot(text_tokens=1, frames=4, frame_shape=(2, 2))
    names = [mocbench.get_backend("vmoba", layer=n).partition for n in range(6)]
    assert names == ["temporal", "spatial", "spatiotemporal"] * 2
    # unset: layer i of a model gets partition i % 3 (for_layer); a set layer pins every layer
    free = mocbench.get_backend("vmoba")
    assert free.partition == "temporal" and free.params.layer is None
    assert [free.for_layer(i).partition for i in range(4)] == ["temporal", "spatial", "spatiotemporal", "temporal"]
    pinned = mocbench.get_backend("vmoba", layer=2)
    assert all(pinned.for_layer(i) is pinned for i in range(3))
    other = mocbench.get_backend("moc")
    assert other.for_layer(5) is other
    assert mocbench.get_backend("vmoba", layer=1, spatial_chunk="1,1").chunking(layout) == "cubes:4,1,1"


@pytest.mark.parametrize("params,match", [
    (dict(layer=-1), "layer must be >= 0"),
    (dict(temporal_chunk=0), "temporal_chunk must be >= 1 frame, got 0"),
    (dict(spatial_chunk="2"), "spatial_chunk must be 2 positive ints 'rows,columns'"),
    (dict(st_chunk="1,2"), "st_chunk must be 3 positive ints"),
    (dict(threshold=0.0), r"threshold must be in \(0, 1\], got 0.0"),
    (dict(top_k=0), "top_k must be >= 1"),
])
def test_vmoba_bad_params_name_the_value(params, match):
    with pytest.raises(ValueError, match=match):
        mocbench.get_backend("vmoba", **params)


def test_vmoba_spatial_partitions_need_geometry_temporal_does_not():
    layout = TokenLayout.single_shot(text_tokens=2, frames=3, tokens_per_frame=4)
    q, k, v = qkv((1, 1, layout.num_tokens, 4), 0)
    assert mocbench.get_backend("vmoba", layer=0)(q, k, v, layout).shape == q.shape
    with pytest.raises(mocbench.UnsupportedError, match="spatial partition .* needs the frame geometry"):
        mocbench.get_backend("vmoba", layer=1)(q, k, v, layout)
