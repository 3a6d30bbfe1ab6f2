"""Tile routing (moc-spec §9) against the independent float64 oracle (tests/oracle.py).

Random layouts (every kind, zero-length captions, frame geometry with ``cubes`` chunks) x chunking rules x
anchors x causal x top_k x tile sizes: the query tiles, the attention pattern, every CPU implementation's
output (and gradients where it has a backward), the accounting (routing 2*T*C*D, pooling of keys and
queries), ``tile=1`` = per-token routing, and the training draws shared by the queries of a tile.
"""

from __future__ import annotations

import random

import oracle
import pytest
import torch
from conftest import Case, case_data, kind_of, max_err, moc_cpu_impls, qkv, random_layout, seeded_grad_out

import mocbench
from mocbench import TokenLayout
from mocbench.backends.moc.tiles import count_tiles, query_tiles

IMPL_NAMES = moc_cpu_impls()
GRAD_IMPL_NAMES = [n for n in IMPL_NAMES if not mocbench.get_backend("moc", impl=n).not_supported_reasons(
    device="cpu", dtype=torch.float32, head_dim=8, requires_grad=True)]
RULES = ("shot", "frame", "frames:2", "tokens:3", "tokens:5", "fixed:4", "fixed:7")
TILES = (1, 2, 3, 4, 7, 128)


def tile_cases(n: int) -> list[Case]:
    out = []
    for idx in range(n):
        rng = random.Random(4000 + idx)
        kind = kind_of(idx)
        rule = RULES[(idx // 5) % len(RULES)]
        layout = random_layout(rng, kind)
        C = len(oracle.chunks(layout, rule))
        top_k = (0, C + 1, rng.randint(1, max(1, C - 1)), rng.randint(1, max(1, C - 1)))[idx % 4]
        params = (("top_k", top_k), ("chunking", rule), ("text_anchor", (idx // 2) % 2 == 0),
                  ("local_anchor", (None, "shot", "chunk")[idx % 3]), ("causal", (idx // 3) % 2 == 0),
                  ("routing", "tile"), ("tile", TILES[idx % len(TILES)]))
        out.append(Case(idx, kind, layout, "moc", params, rng.choice((1, 2)), rng.choice((1, 2)),
                        rng.choice((8, 12)), 60_000 + 89 * idx))
    return out


CASES = tile_cases(24)
HALF = CASES[::2]  # per-implementation checks (eager flex on CPU is slow)
FEW = CASES[1::6]


def cases_param(cases):
    return pytest.mark.parametrize("case", cases, ids=[c.id for c in cases])



# --------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("params,exc,match", [
    ({"routing": "tiles"}, ValueError, "'routing' must be one of 'token', 'tile', got 'tiles'"),
    ({"tile": 64}, ValueError, r"tile=64 only applies with routing='tile'"),
    ({"routing": "token", "tile": 2}, ValueError, "only applies with routing='tile'"),
    ({"routing": "tile", "tile": 0}, ValueError, "tile must be an int >= 1.*got 0"),
    ({"routing": "tile", "tile": "128"}, TypeError, "tile"),
    ({"routing": "tile", "tile": True}, TypeError, "tile"),
])
def test_tile_params_are_validated_naming_the_value(params, exc, match):
    with pytest.raises(exc, match=match):
        mocbench.get_backend("moc", **params)


def test_tile_defaults_to_128_with_tile_routing_and_none_per_token():
    assert mocbench.get_backend("moc", routing="tile").params.resolved_tile == 128
    assert mocbench.get_backend("moc").params.resolved_tile is None


# --------------------------------------------------------------------------- tiles
TILE_LAYOUTS = [(kind_of(i), random_layout(random.Random(4500 + i), kind_of(i), geometry=i % 2 == 1))
                for i in range(10)]


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("kind,layout", TILE_LAYOUTS, ids=[f"{i}-{k}" for i, (k, _) in enumerate(TILE_LAYOUTS)])
def test_query_tiles_equal_oracle_tiles_and_the_analytic_count(kind, layout, tile):
    """Tiles = pieces (one chunk, one segment) cut by the grid of ``tile`` positions, in stream order;
    count_tiles (O(pieces)) gives the same T. Geometry layouts add cubes chunks whose rows merge into one
    piece when a cube is as wide as the frame."""
    rules = list(RULES) + (["cubes:2,1,2", f"cubes:1,1,{layout.frame_shape[1]}"] if layout.frame_shape else [])
    for rule in rules:
        want = oracle.query_tiles(layout, rule, tile)
        got = query_tiles(layout, rule, tile)
        assert got.token_tile.tolist() == [t for t, toks in enumerate(want) for _ in toks], rule
        assert got.tile_size.tolist() == [len(t) for t in want], rule
        assert count_tiles(layout, rule, tile) == len(want), rule


# --------------------------------------------------------------------------- eval mode vs the oracle
@cases_param(CASES)
def test_tile_routing_pattern_equals_oracle(case):
    """attention_pattern = anchors U the chunks of Omega(tile of i), the tile's top_k by mean query."""
    d = case_data(case)
    pat = case.make_backend().attention_pattern(d.q, d.k, case.layout)
    diff = (pat != d.mask).nonzero()
    assert diff.numel() == 0, f"{len(diff)} (b,h,i,j) differ, first {diff[:5].tolist()}"


@pytest.mark.parametrize("impl", IMPL_NAMES)
@cases_param(HALF)
def test_tile_routing_output_matches_float64_oracle(case, impl):
    """Every CPU implementation consumes the tile-routed plan unchanged: f32 within 1e-5 of the oracle."""
    d = case_data(case)
    out = case.make_backend(impl=impl)(d.q, d.k, d.v, case.layout)
    err = max_err(out, oracle.attend(d.q, d.k, d.v, d.mask))
    assert err <= 1e-5, f"max abs error {err:.3g}"


@pytest.mark.parametrize("impl", IMPL_NAMES)
@cases_param(FEW)
def test_tile_routing_float64_output_matches_oracle(case, impl):
    d = case_data(case)
    q, k, v = (t.double() for t in (d.q, d.k, d.v))
    err = max_err(case.make_backend(impl=impl)(q, k, v, case.layout), oracle.attend(q, k, v, d.mask))
    assert err <= 1e-10, f"max abs error {err:.3g}"


@pytest.mark.parametrize("impl", GRAD_IMPL_NAMES)
@cases_param(FEW)
def test_tile_routing_gradients_match_oracle_autograd(case, impl):
    """dq, dk, dv through the attention on the tile-routed set equal autograd through the oracle."""
    d = case_data(case)
    g = seeded_grad_out(case.shape, case.seed)
    q, k, v = (t.detach().clone().requires_grad_() for t in (d.q, d.k, d.v))
    (case.make_backend(impl=impl)(q, k, v, case.layout).double() * g).sum().backward()
    q0, k0, v0 = (t.detach().double().requires_grad_() for t in (d.q, d.k, d.v))
    (oracle.attend(q0, k0, v0, d.mask) * g).sum().backward()
    for name, got, want in (("q", q.grad, q0.grad), ("k", k.grad, k0.grad), ("v", v.grad, v0.grad)):
        assert max_err(got, want) <= 1e-5, f"grad {name}"


@cases_param(CASES)
def test_tile_routing_stats_follow_spec_accounting(case):
    """pairs from the oracle's pattern; routing 2*T*C*D with the oracle's T; pooling L*D of keys plus L*D
    of queries when tile > 1 (§9); estimate has the same T-dependent FLOPs without tensors."""
    d = case_data(case)
    backend = case.make_backend()
    st = backend.stats(d.q, d.k, case.layout)
    B, H, L, D = case.shape
    rule, tile = case.kwargs["chunking"], case.kwargs["tile"]
    C, T = len(oracle.chunks(case.layout, rule)), len(oracle.query_tiles(case.layout, rule, tile))
    assert st.pairs == oracle.pairs(d.mask)
    routes = case.kwargs["top_k"] > 0
    assert st.routing_flops == (B * H * 2 * T * C * D if routes else 0)
    assert st.pooling_flops == (B * H * L * D * (2 if tile > 1 else 1) if routes else 0)
    est = backend.estimate(case.layout, head_dim=D, batch=B, heads=H)
    assert (est.routing_flops, est.pooling_flops) == (st.routing_flops, st.pooling_flops)


# --------------------------------------------------------------------------- tile = 1 is per-token routing
@cases_param(CASES)
def test_tile_one_equals_token_routing_in_eval_mode(case):
    """§9: tile=1 gives the same Omega, output and accounting as routing='token'."""
    d = case_data(case)
    kw = {k: v for k, v in case.kwargs.items() if k not in ("routing", "tile")}
    token = mocbench.get_backend("moc", **kw)
    one = mocbench.get_backend("moc", **kw, routing="tile", tile=1)
    assert torch.equal(token.prepare(d.q, d.k, case.layout).selected, one.prepare(d.q, d.k, case.layout).selected)
    assert torch.equal(token(d.q, d.k, d.v, case.layout), one(d.q, d.k, d.v, case.layout))
    assert token.stats(d.q, d.k, case.layout) == one.stats(d.q, d.k, case.layout)
    B, H, _, D = case.shape
    assert token.estimate(case.layout, head_dim=D, batch=B, heads=H) == one.estimate(case.layout, head_dim=D,
                                                                                    batch=B, heads=H)


REG = {"p_drop_off": 0.4, "p_drop_in": 0.6, "n_drop_in": 2}


@cases_param([c for c in CASES if c.kwargs["top_k"] > 0][:8])
def test_tile_one_training_draws_equal_token_routing(case):
    """With tile=1 the per-(b,h,tile) draws are the per-(b,h,query) draws: equal plans for equal seeds."""
    d = case_data(case)
    kw = {k: v for k, v in case.kwargs.items() if k not in ("routing", "tile")}
    plans = [mocbench.get_backend("moc", **kw, **REG, **extra).prepare(
        d.q, d.k, case.layout, training=True, generator=torch.Generator().manual_seed(5))
        for extra in ({}, {"routing": "tile", "tile": 1})]
    assert torch.equal(plans[0].selected, plans[1].selected)


# --------------------------------------------------------------------------- training (§6 per tile)
def _training_layout():
    return TokenLayout.multi_shot(text_tokens=[2, 3, 1], frames=[3, 2, 3], tokens_per_frame=5)


@pytest.mark.parametrize("tile", [2, 3, 8])
def test_tile_training_draws_are_shared_by_the_queries_of_a_tile(tile):
    """One drop-off draw per (b, h, tile, slot) and one drop-in draw per (b, h, tile): every query of a tile
    has the same selected slots, in training as in eval; regularisers never add a non-candidate chunk,
    and over a few seeds they do change the plan."""
    layout = _training_layout()
    q, k, _ = qkv((2, 3, layout.num_tokens, 8), 3)
    st = oracle.moc_structure(layout, chunking="frame")
    tiles = oracle.query_tiles(layout, "frame", tile)
    changed = False
    for seed in range(4):
        b = mocbench.get_backend("moc", top_k=2, routing="tile", tile=tile, seed=seed, **REG)
        sel = b.prepare(q, k, layout, training=True).selected
        for t in tiles:
            assert bool((sel[:, :, t] == sel[:, :, t[:1]]).all()), f"tile {t} has different selections"
        routed = torch.zeros(*sel.shape[:3], len(st.chunks) + 1, dtype=torch.bool)
        routed.scatter_(-1, torch.where(sel < 0, len(st.chunks), sel), True)
        assert not bool((routed[..., :-1] & ~st.candidate[None, None]).any())
        eval_sel = b.prepare(q, k, layout).selected
        changed |= not torch.equal(sel[..., :eval_sel.shape[-1]], eval_sel)
    assert changed


def test_tile_training_drop_off_one_leaves_the_anchors():
    layout = _training_layout()
    q, k, _ = qkv((1, 2, layout.num_tokens, 8), 4)
    b = mocbench.get_backend("moc", top_k=2, routing="tile", tile=4, p_drop_off=1.0)
    sel = b.prepare(q, k, layout, training=True).selected
    assert bool((sel == -1).all())
