"""The static peer families (``sliding_tile``, ``radial``) against their independent float64 oracles
(tests/oracle_peers.py, written from docs/specs/): pattern, float32/float64 output, gradients, measured
pairs = oracle pairs = analytic estimate, on random multi-shot layouts with frame geometry; and the
parameter / layout errors."""

from __future__ import annotations

import random

import oracle
import oracle_peers
import pytest
import torch
from conftest import kind_of, max_err, qkv, random_layout, seeded_grad_out

import mocbench
from mocbench import TokenLayout

CONFIGS = [
    ("sliding_tile", {"tile": "1,1,1", "window": "1,1,1"}),
    ("sliding_tile", {"tile": "1,2,2", "window": "3,1,3"}),
    ("sliding_tile", {"tile": "2,1,2", "window": "2,2,2"}),
    ("sliding_tile", {"tile": "2,2,3", "window": "1,3,2"}),
    ("sliding_tile", {"tile": "3,3,4", "window": "5,5,5"}),
    ("radial", {}),
    ("radial", {"dense_frames": 0, "sink": False}),
    ("radial", {"dense_frames": 0, "min_width": 4, "decay": 0.5}),
    ("radial", {"dense_frames": 2, "min_width": 2, "decay": 0.25, "sink": False}),
]
CASES = [(i, name, params, random_layout(random.Random(1300 + i), kind_of(i), geometry=True))
         for i, (name, params) in enumerate(CONFIGS * 2)]
IDS = [f"c{i}-{name}-{'-'.join(f'{k}={v}' for k, v in p.items())}" for i, name, p, _ in CASES]
cases = pytest.mark.parametrize("i,name,params,layout", CASES, ids=IDS)



def shape_of(i: int, layout) -> tuple[int, int, int, int]:
    return (1 + i % 2, 2, layout.num_tokens, 8)


@cases
def test_static_pattern_equals_oracle(i, name, params, layout):
    q, k, _ = qkv(shape_of(i, layout), 50 + i)
    want = oracle_peers.static_pattern(name, params, layout, *shape_of(i, layout)[:2])
    got = mocbench.get_backend(name, **params).attention_pattern(q, k, layout)
    diff = (got != want).nonzero()
    assert diff.numel() == 0, f"{len(diff)} entries differ, first {diff[:4].tolist()} ({layout.describe()})"


@cases
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_static_output_and_gradients_match_oracle(i, name, params, layout, dtype):
    """The gathered-group execution equals the float64 masked softmax of the oracle's pattern (f32 1e-5),
    and dq, dk, dv equal autograd through it."""
    shape = shape_of(i, layout)
    q, k, v = (t.to(dtype).requires_grad_() for t in qkv(shape, 50 + i))
    mask = oracle_peers.static_pattern(name, params, layout, *shape[:2])
    backend = mocbench.get_backend(name, **params)
    out = backend(q, k, v, layout)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert out.dtype == dtype and max_err(out, oracle.attend(q, k, v, mask)) <= tol
    g = seeded_grad_out(shape, i)
    (out.double() * g).sum().backward()
    q0, k0, v0 = (t.detach().double().requires_grad_() for t in (q, k, v))
    (oracle.attend(q0, k0, v0, mask) * g).sum().backward()
    for n, a, b in (("q", q.grad, q0.grad), ("k", k.grad, k0.grad), ("v", v.grad, v0.grad)):
        assert max_err(a, b) <= tol, f"grad {n}"


@cases
def test_static_measured_pairs_equal_oracle_and_estimate(i, name, params, layout):
    shape = shape_of(i, layout)
    q, k, _ = qkv(shape, 50 + i)
    backend = mocbench.get_backend(name, **params)
    mask = oracle_peers.static_pattern(name, params, layout, *shape[:2])
    measured = backend.stats(q, k, layout)
    assert measured.pairs == oracle.pairs(mask)
    assert backend.estimate(layout, head_dim=8, batch=shape[0], heads=2) == measured


def test_sliding_tile_window_is_shifted_inside_the_grid_not_cut():
    """One shot of 5 frames x 1x1, tile 1,1,1, window 3: frame 0 attends frames 0-2, frame 4 frames 2-4."""
    layout = TokenLayout.single_shot(text_tokens=0, frames=5, frame_shape=(1, 1))
    pat = mocbench.get_backend("sliding_tile", tile="1,1,1", window="3,1,1").attention_pattern(
        *qkv((1, 1, 5, 4), 0)[:2], layout)[0, 0]
    assert pat[0].nonzero().flatten().tolist() == [0, 1, 2]
    assert pat[2].nonzero().flatten().tolist() == [1, 2, 3]
    assert pat[4].nonzero().flatten().tolist() == [2, 3, 4]


def test_radial_window_halves_as_distance_doubles():
    """P = 8 (bit length 4 -> 16): d = 2, 3 give windows of 4 tokens, d = 4..7 of 2, d = 8 of 1."""
    layout = TokenLayout.single_shot(text_tokens=0, frames=9, frame_shape=(1, 8))
    pat = mocbench.get_backend("radial", sink=False).attention_pattern(*qkv((1, 1, 72, 4), 0)[:2], layout)[0, 0]
    q = 8 * 8 + 0  # frame 8, patch 0
    seen = {f: pat[q, f * 8:(f + 1) * 8].nonzero().flatten().tolist() for f in range(9)}
    assert seen[8] == seen[7] == list(range(8))  # d <= dense_frames = 1
    assert seen[6] == seen[5] == [0, 1, 2, 3, 4]  # d = 2, 3: |s - t| <= 4
    assert seen[4] == seen[1] == [0, 1, 2]  # d = 4 .. 7: |s - t| <= 2
    assert seen[0] == [0, 1]  # d = 8: |s - t| <= 1


def test_radial_min_width_decimates_far_frames():
    """min_width = 8 tokens on P = 8 (2^bitlen = 16): d = 1 has a window of 8 (kept); d = 2, 3 of 4 -> every
    2nd distance kept; d = 4..7 of 2 -> every 4th; d = 8 of 1 -> every 8th."""
    layout = TokenLayout.single_shot(text_tokens=0, frames=9, frame_shape=(1, 8))
    pat = mocbench.get_backend("radial", sink=False, min_width=8, dense_frames=0).attention_pattern(
        *qkv((1, 1, 72, 4), 0)[:2], layout)[0, 0]
    frames_seen = sorted({int(j) // 8 for j in pat[8 * 8].nonzero().flatten()})
    assert frames_seen == [0, 4, 6, 7, 8]  # from frame 8: d = 8, 4, 2, 1, 0


@pytest.mark.parametrize("name,params,match", [
    ("sliding_tile", {"tile": "2,2"}, "tile must be 3 positive ints 'frames,rows,columns'.*got '2,2'"),
    ("sliding_tile", {"window": "0,1,1"}, "window must be 3 positive ints"),
    ("radial", {"dense_frames": -1}, "dense_frames must be >= 0 frames, got -1"),
    ("radial", {"decay": 0.0}, "decay must be a finite float > 0, got 0.0"),
    ("radial", {"min_width": 0}, "min_width must be >= 1 token, got 0"),
])
def test_bad_params_name_the_value(name, params, match):
    with pytest.raises(ValueError, match=match):
        mocbench.get_backend(name, **params)


def test_sliding_tile_refuses_a_layout_without_geometry_with_the_reason():
    layout = TokenLayout.single_shot(text_tokens=2, frames=2, tokens_per_frame=4)
    q, k, v = qkv((1, 1, layout.num_tokens, 4), 0)
    sta = mocbench.get_backend("sliding_tile")
    with pytest.raises(mocbench.UnsupportedError, match=r"sliding_tile needs the frame geometry.*frame_shape"):
        sta(q, k, v, layout)
    with pytest.raises(ValueError, match="needs the frame geometry"):
        sta.estimate(layout, head_dim=4)
    assert mocbench.get_backend("radial")(q, k, v, layout).shape == q.shape  # radial needs no geometry
