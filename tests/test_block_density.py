"""Block density (moc-spec §10): measured from a plan without an L x L tensor, analytic where determined.

Measured block density equals a brute-force count of the blocks of ``attention_pattern`` (an explicit
loop over the block grid, independent of mocbench.blocks) on small layouts, for every built-in backend:
dense, the fixed sparse baselines, MoC with per-token and tile routing (the peer families are checked in
tests/test_peer_block_density.py). The analytic figure equals the measured one wherever it is given, is given for
every static pattern and for aligned tile routing, and is None ("depends on routing") otherwise.
"""

from __future__ import annotations

import json
import random

import oracle
import pytest
import torch
from conftest import fixed_sparse_configs, kind_of, qkv, random_layout

import mocbench
from mocbench import TokenLayout
from mocbench.anchors import candidate_square_sums

SHAPES = [(1, 1), (3, 5), (4, 4), (8, 2), (128, 128)]


def brute_force(pattern: torch.Tensor, block_shape) -> float:
    """The number of distinct (b, h, i // bq, j // bk) over attended pairs (b, h, i, j), over B*H*QB*KB."""
    B, H, L, _ = pattern.shape
    bq, bk = block_shape
    b, h, i, j = pattern.nonzero().unbind(1)
    touched = len(set(zip(b.tolist(), h.tolist(), (i // bq).tolist(), (j // bk).tolist())))
    return touched / (B * H * (-(-L // bq)) * (-(-L // bk)))


def _moc_configs():
    out = []
    for i in range(16):
        rng = random.Random(7000 + i)
        rule = ("shot", "frame", "frames:2", "tokens:3", "fixed:4", "fixed:7")[i % 6]
        params = {"top_k": rng.randint(0, 4), "chunking": rule, "causal": i % 2 == 0,
                  "text_anchor": i % 3 != 2, "local_anchor": (None, "shot", "chunk")[i % 3]}
        if i % 2:
            params.update(routing="tile", tile=rng.choice((1, 2, 3, 8)))
        out.append(("moc", params))
    return out


CONFIGS = ([("dense", {}), ("dense", {"sdpa_backend": "math"})] + [(n, dict(p)) for n, p in fixed_sparse_configs()]
           + _moc_configs())


@pytest.mark.parametrize("name,params", CONFIGS, ids=[f"{i}-{n}" for i, (n, _) in enumerate(CONFIGS)])
def test_measured_block_density_equals_a_brute_force_count(name, params):
    """stats(..., block_shape) = the blocks of attention_pattern holding a pair, for several block shapes and
    random layouts; the analytic figure, where given, is the same number."""
    i = CONFIGS.index((name, params))
    layout = random_layout(random.Random(7500 + i), kind_of(i))
    q, k, _ = qkv((2, 2, layout.num_tokens, 8), 7600 + i)
    backend = mocbench.get_backend(name, **params)
    pattern = backend.attention_pattern(q, k, layout)
    for shape in SHAPES:
        got = backend.stats(q, k, layout, block_shape=shape)
        assert got.block_shape == shape
        assert got.block_density == pytest.approx(brute_force(pattern, shape), abs=1e-12), shape
        est = backend.estimate(layout, head_dim=8, batch=2, heads=2, block_shape=shape).block_density
        assert est is None or est == pytest.approx(got.block_density, abs=1e-12), shape
        if name != "moc":
            assert est is not None, f"{name}: a static pattern's block density is determined"


def test_default_pattern_count_agrees_with_the_run_based_counts():
    """AttentionBackend.plan_block_density (the default: count the materialised pattern's blocks, for backends
    without a run-based count) gives the run-based figures of MoC and the fixed sparse baselines."""
    from mocbench.backend import AttentionBackend

    layout = random_layout(random.Random(8), "segments")
    q, k, _ = qkv((2, 2, layout.num_tokens, 8), 8)
    for name, params in [("moc", {"top_k": 2}), ("moc", {"top_k": 2, "routing": "tile", "tile": 4}),
                         ("frame_window", {}), ("strided", {"stride": 3})]:
        backend = mocbench.get_backend(name, **params)
        plan = backend.prepare(q, k, layout)
        for shape in [(3, 5), (8, 2)]:
            assert AttentionBackend.plan_block_density(backend, plan, shape) == pytest.approx(
                backend.plan_block_density(plan, shape), abs=1e-12)


def test_moc_routed_blocks_are_counted_per_batch_and_head():
    """Different heads route differently: the density is the mean over (b, h) of each head's own grid."""
    layout = TokenLayout.single_shot(text_tokens=0, frames=8, tokens_per_frame=4)
    q, k, _ = qkv((1, 3, layout.num_tokens, 8), 11)
    backend = mocbench.get_backend("moc", top_k=1, chunking="frame", causal=False)
    pattern = backend.attention_pattern(q, k, layout)
    per_head = [brute_force(pattern[:, h:h + 1], (4, 4)) for h in range(3)]
    assert backend.stats(q, k, layout, block_shape=(4, 4)).block_density == pytest.approx(sum(per_head) / 3)


# --------------------------------------------------------------------------- analytic where determined
ALIGNED = [  # every caption, frame and shot a multiple of the 4 x 4 (and 4 x 2) block grid
    pytest.param(TokenLayout.multi_shot(text_tokens=[4, 4, 4], frames=[3, 2, 3], tokens_per_frame=4),
                 dict(chunking="frame"), id="interleaved-frame"),
    pytest.param(TokenLayout.multi_shot(text_tokens=[8], frames=[4, 4], tokens_per_frame=8, text_placement="front"),
                 dict(chunking="frames:2", local_anchor="shot"), id="front-frames2"),
    pytest.param(TokenLayout.single_shot(text_tokens=4, frames=6, tokens_per_frame=8),
                 dict(chunking="frame", causal=False), id="single-frame-bidirectional"),
    pytest.param(TokenLayout.multi_shot(text_tokens=[4], frames=[4, 4], tokens_per_frame=4, text_placement="back"),
                 dict(chunking="tokens:8", local_anchor="chunk"), id="back-tokens8-chunk"),
]


@pytest.mark.parametrize("tile", [8, 1000])
@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("layout,params", ALIGNED)
def test_aligned_tile_routing_block_density_is_determined_and_exact(layout, params, top_k, tile):
    """§10: chunk and segment boundaries on the grid, tiles covering whole query blocks, equal-sized candidates:
    estimate(block_shape) = the measured block density = 1 - sparsity (nothing is wasted inside a block)."""
    backend = mocbench.get_backend("moc", top_k=top_k, routing="tile", tile=tile, **params)
    q, k, _ = qkv((2, 2, layout.num_tokens, 8), 5)
    for shape in [(4, 4), (4, 2)]:
        est = backend.estimate(layout, head_dim=8, batch=2, heads=2, block_shape=shape)
        got = backend.stats(q, k, layout, block_shape=shape)
        assert est.block_density is not None, shape
        assert est.block_density == pytest.approx(got.block_density, abs=1e-12)
        assert got.block_density == pytest.approx(1 - got.sparsity, abs=1e-12)


@pytest.mark.parametrize("case,why", [
    (dict(routing="token"), "per-token routing: neighbouring queries choose differently"),
    (dict(routing="tile", tile=2), "a query block holds two tiles"),
    (dict(routing="tile", tile=6), "tile not a multiple of bq"),
    (dict(routing="tile", tile=4, block=(8, 8)), "4-token captions and frames are not on an 8-grid"),
    (dict(routing="tile", tile=4, text_anchor=False), "captions (4) and shots' frames differ: unequal candidates"),
])
def test_block_density_depends_on_routing_otherwise(case, why):
    layout = TokenLayout.multi_shot(text_tokens=[4, 4, 4], frames=[3, 2, 3], tokens_per_frame=4)
    case = dict(case)
    block = case.pop("block", (4, 4))
    if case.get("text_anchor") is False:
        layout = TokenLayout.multi_shot(text_tokens=[4, 8, 4], frames=[3, 2, 3], tokens_per_frame=4)
    backend = mocbench.get_backend("moc", top_k=1, chunking="frame", **case)
    assert backend.estimate(layout, head_dim=8, block_shape=block).block_density is None, why


@pytest.mark.parametrize("top_k", [0, 50])
def test_moc_without_a_routing_choice_has_a_static_block_density(top_k):
    """top_k = 0, or more than any class's candidates: the pattern does not depend on q, k, so the analytic
    block density is given (any layout, any grid) and equals the measured one."""
    layout = random_layout(random.Random(3), "segments")
    q, k, _ = qkv((1, 2, layout.num_tokens, 8), 6)
    for routing in ({}, {"routing": "tile", "tile": 3}):
        b = mocbench.get_backend("moc", top_k=top_k, chunking="tokens:3", **routing)
        for shape in SHAPES[:4]:
            est = b.estimate(layout, head_dim=8, batch=1, heads=2, block_shape=shape).block_density
            assert est == pytest.approx(b.stats(q, k, layout, block_shape=shape).block_density, abs=1e-12)


LAYOUTS = [(kind_of(i), random_layout(random.Random(7800 + i), kind_of(i))) for i in range(5)]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("local", ["shot", "chunk"])
@pytest.mark.parametrize("kind,layout", LAYOUTS, ids=[f"{i}-{k}" for i, (k, _) in enumerate(LAYOUTS)])
def test_candidate_square_sums_equal_the_oracle_tables(kind, layout, local, causal):
    """sum over candidates of (uncovered keys)^2, per class, from prefix sums = the oracle's per-query count."""
    for rule in ("frame", "tokens:3", "fixed:4", "fixed:7"):
        for ta in (True, False):
            backend = mocbench.get_backend("moc", chunking=rule, local_anchor=local, causal=causal, text_anchor=ta)
            classes = backend.query_classes(layout)
            st = oracle.moc_structure(layout, chunking=rule, text_anchor=ta, local_anchor=local, causal=causal)
            sq = candidate_square_sums(classes, causal=causal)
            token_class = backend.structure(layout).token_class
            for i in range(layout.num_tokens):
                uncovered = [sum(1 for j in toks if not st.anchor[i, j]) for c, toks in enumerate(st.chunks)
                             if st.candidate[i, c]]
                assert int(sq[token_class[i]]) == sum(u * u for u in uncovered), (rule, ta, i)


@pytest.mark.parametrize("bad", [(0, 4), (4,), 128, (4.0, 4), (True, 4), "128,128", None])
def test_bad_block_shape_is_refused_naming_it(bad):
    layout = TokenLayout.single_shot(text_tokens=2, frames=2, tokens_per_frame=2)
    q, k, _ = qkv((1, 1, layout.num_tokens, 4), 1)
    b = mocbench.get_backend("moc")
    if bad is None:  # None means "not asked for"
        assert b.stats(q, k, layout, block_shape=None).block_shape is None
        return
    with pytest.raises(ValueError, match="block_shape must be two ints >= 1"):
        b.stats(q, k, layout, block_shape=bad)
    with pytest.raises(ValueError, match=r"got " + repr(bad).replace("(", r"\(").replace(")", r"\)")):
        mocbench.estimate(layout, "moc", head_dim=4, block_shape=bad)


# --------------------------------------------------------------------------- plan, bench rows, report
def test_plan_paper_config_prints_token_sparsity_for_both_routings_and_tile_block_density(capsys):
    """configs/plan/paper_multishot.yaml: per-token and tile routing have the same token sparsity; both block
    densities depend on routing on the 128-grid (936-token frames); the aligned 64-grid variant determines the
    tile row's block density (= 1 - sparsity) and still leaves per-token routing's to the routing."""
    from pathlib import Path

    from mocbench.cli import main

    root = Path(__file__).resolve().parents[1]
    assert main(["plan", str(root / "configs/plan/paper_multishot.yaml"), "--json"]) == 0
    rows = {r["backend"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    tile, token = rows["moc tile routing (tile=128)"], rows["moc(chunking=tokens:1280)"]
    assert tile["sparsity"] == pytest.approx(token["sparsity"], abs=1e-3) and 0.8 < tile["sparsity"] < 0.9
    assert tile["block_density"] is None and token["block_density"] is None
    assert rows["dense"]["block_density"] == 1.0 and rows["dense"]["block_shape"] == [128, 128]
    assert main(["plan", str(root / "configs/plan/paper_multishot_tile.yaml")]) == 0
    assert "depends on" in capsys.readouterr().out  # (the table may wrap the cell)
    assert main(["plan", str(root / "configs/plan/paper_multishot_tile.yaml"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows[-1]["block_density"] == pytest.approx(1 - rows[-1]["sparsity"], abs=1e-12)
    assert rows[-2]["backend"] == "moc per-token routing" and rows[-2]["block_density"] is None


@pytest.mark.parametrize("override,message", [
    ("compare=[{params: {top_k: 1}}]", "compare[0] must be a backend name or a mapping with 'name'"),
    ("compare=[{name: moc, parms: {}}]", "compare[0] has unknown key(s) ['parms']"),
    ("compare=[{name: moc, params: 3}]", "compare[0].params must be a mapping"),
    ("block_shape=[0,128]", "block_shape must be two ints >= 1"),
    ("compare=[{name: moc, params: {routing: tile, tile: 0}}]", "tile must be an int >= 1"),
])
def test_plan_compare_entries_and_block_shape_are_checked(capsys, override, message):
    from mocbench.cli import main

    assert main(["plan", override]) == 2
    assert message in capsys.readouterr().err


def test_bench_rows_carry_measured_and_analytic_block_density(tmp_path):
    """Every bench row: block_density measured (128 x 128), est_block_density analytic (empty: depends on
    routing); both stored next to sparsity, and the report's FLOPs table shows both sparsities."""
    from mocbench.bench.config import BackendEntry, BenchConfig, TimingConfig, WorkloadConfig, expand_cells
    from mocbench.bench.runner import measure_cell
    from mocbench.bench.store import COLUMNS
    from mocbench.bench.tables import flops_table

    assert COLUMNS.index("block_density") == COLUMNS.index("sparsity") + 1
    assert COLUMNS.index("est_block_density") == COLUMNS.index("est_sparsity") + 1
    cfg = BenchConfig(name="pytest", backends=[BackendEntry(name="dense"), BackendEntry(name="shot_local"),
                                               BackendEntry(name="moc", params={"top_k": 1})],
                      workloads=[WorkloadConfig(name="t", passes=["fwd"], shots=[2], frames=[4], tokens_per_frame=64,
                                                text_tokens=64, heads=1, head_dim=8)],
                      timing=TimingConfig(warmup=0, repeats=1, min_repeat_ms=0.0, max_inner=1))
    rows = [measure_cell(cell, cfg) for cell in expand_cells(cfg)]
    assert [r["status"] for r in rows] == ["ok"] * 3, [r["reason"] for r in rows]
    dense, local, moc = rows
    assert dense["block_density"] == dense["est_block_density"] == 1.0
    assert local["block_density"] == local["est_block_density"] >= 1 - local["sparsity"]
    assert 0 < moc["block_density"] < 1 and moc["est_block_density"] is None
    import pandas as pd

    table = flops_table(pd.DataFrame([{**r, "dense_over_total": 1.0, "flops_ratio": 1.0} for r in rows]))
    got = dict(zip(table["backend"], table["block sparsity a block-sparse kernel can use"]))
    assert got == pytest.approx({r["label"]: 1 - r["block_density"] for r in rows})
    assert "sparsity the method asks for" in table.columns


def test_sum_stats_averages_block_density_over_calls_of_one_grid():
    from mocbench.stats import AttentionStats, sum_stats

    a = AttentionStats(1, 2, 64, 8, 100, block_shape=(16, 16), block_density=0.5)
    b = AttentionStats(3, 2, 64, 8, 300, block_shape=(16, 16), block_density=0.25)
    assert sum_stats([a, b]).block_density == pytest.approx((0.5 + 3 * 0.25) / 4)
    assert sum_stats([a, AttentionStats(1, 2, 32, 8, 10, block_shape=(16, 16), block_density=0.5)]).block_density is None
    assert sum_stats([a, AttentionStats(1, 2, 64, 8, 10)]).block_shape is None


@pytest.mark.parametrize("name,params", [("frame_window", {"window": 1}), ("strided", {"stride": 2}),
                                         ("moc", {"top_k": 2, "routing": "tile", "tile": 3}), ("moc", {"top_k": 50})])
def test_block_grid_joins_in_small_chunks_give_the_same_count(monkeypatch, name, params):
    """The (query block, key block) join runs in chunks of JOIN_CHUNK candidates: tiny chunks, same count."""
    from mocbench import blocks

    layout = random_layout(random.Random(21), "interleaved")
    q, k, _ = qkv((1, 2, layout.num_tokens, 8), 2)
    backend = mocbench.get_backend(name, **params)
    want = brute_force(backend.attention_pattern(q, k, layout), (3, 2))
    monkeypatch.setattr(blocks, "JOIN_CHUNK", 2)
    assert backend.stats(q, k, layout, block_shape=(3, 2)).block_density == pytest.approx(want, abs=1e-12)
