"""The FlexAttention implementations of the peer families (``flex`` compiled, ``flex_eager`` uncompiled; a BlockMask
built from each pattern's tiles, mocbench/backends/flex_blocks.py) against the independent float64 oracles
(tests/oracle_peers.py):

* output (``flex_eager``, whose mask_mod runs the kernel's tile semantics: full tiles whole, partial tiles by
  ``mask_mod``, absent tiles skipped; and compiled ``flex`` on CPU, which skips tiles itself) and gradients (torch has no CPU backward for FlexAttention, so the test
  routes the same block mask through FlexAttention's differentiable operator) equal the oracle;
* every tile is classified as the oracle's pattern says (full, partial, absent), the tiles the kernel visits
  are the block-density grid, and ``mask_mod`` is the oracle's predicate, in the kernel's token order;
* on tile-aligned layouts STA and VSA have no partial tile;
* asking for flex where it cannot run is one clear refusal, and ``auto`` picks by device, never by fallback.

Tiles are 8 or 16 tokens here (``flex_blocks.BLOCK`` patched) so that tiny layouts have full, partial and absent
tiles; one case keeps the real 128.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import oracle_peers
import pytest
import torch
from conftest import kind_of, max_err, qkv, random_layout, seeded_grad_out
from torch._higher_order_ops.flex_attention import flex_attention as flex_attention_op

import mocbench
from mocbench import TokenLayout
from mocbench.backends import flex_blocks
from mocbench.backends.peer_impl import MEASURED, measured_note
from mocbench.cli import main

MIN_MARGIN = 1e-4
FAMILIES = [
    ("sliding_tile", {"tile": "1,2,2", "window": "3,1,3"}),
    ("sliding_tile", {"tile": "2,1,2", "window": "2,2,2"}),
    ("radial", {}),
    ("radial", {"dense_frames": 0, "min_width": 2, "decay": 0.5, "sink": False}),
    ("svg", {"width": 1.0, "num_samples": 5}),
    ("svg", {"width": 0.5, "sink": False, "num_samples": 3}),
    ("vsa", {"cube": "2,2,2", "top_k": 2}),
    ("vsa", {"cube": "1,2,3", "top_k": 1, "coarse_gate": 0.5}),
    ("vmoba", {"layer": 2, "select": "topk", "top_k": 2, "st_chunk": "2,1,2"}),
    ("vmoba", {"layer": 0, "select": "threshold"}),
    ("vmoba", {"layer": 1, "select": "topk", "top_k": 2, "spatial_chunk": "1,2"}),
]
CASES = [(i, name, params, block, random_layout(random.Random(2600 + i), kind_of(i), geometry=True))
         for i, ((name, params), block) in enumerate(zip(FAMILIES * 2, [8] * len(FAMILIES) + [16] * len(FAMILIES)))]
CASES.append((len(CASES), "sliding_tile", {"tile": "1,2,2", "window": "3,1,3"}, 128,
              random_layout(random.Random(2700), "interleaved", geometry=True)))
IDS = [f"c{i}-{name}-b{block}-" + "-".join(f"{k}={v}" for k, v in p.items()) for i, name, p, block, _ in CASES]
cases = pytest.mark.parametrize("i,name,params,block,layout", CASES, ids=IDS)


@pytest.fixture
def tile(monkeypatch):
    """Set FlexAttention's tile for the call (the families read ``flex_blocks.BLOCK`` when they build)."""
    return lambda block: monkeypatch.setattr(flex_blocks, "BLOCK", block)


def inputs(i: int, name: str, params: dict, layout, dtype=torch.float32):
    """q, k, v (B = 1 or 2, H = 2) whose routing decisions are >= MIN_MARGIN from a tie, the oracle pattern.
    For svg, head 1's queries and keys carry a code of their patch so that both patterns get chosen."""
    shape = (1 + i % 2, 2, layout.num_tokens, 8)
    code = torch.nn.functional.one_hot(layout.patch_id.clamp(min=0) % 8, 8).double() * (layout.patch_id >= 0)[:, None]
    for seed in range(3000 + 53 * i, 3100 + 53 * i):
        q, k, v = qkv(shape, seed, torch.float64)
        if name == "svg":
            q[:, 1], k[:, 1] = 0.5 * q[:, 1] + 2.0 * code, 0.5 * k[:, 1] + 2.0 * code
        q, k, v = (t.float().to(dtype) for t in (q, k, v))
        pattern, margin = oracle_peers.pattern_and_margin(name, params, q, k, layout)
        if margin >= MIN_MARGIN:
            return q, k, v, pattern
    raise AssertionError("no input without a near-tie")


def kernel_order(backend, layout) -> torch.Tensor:
    """The oracle's kernel order: tile-/cube-major for STA and VSA (each shot's caption, then its tiles), stream
    order for the others (docs/specs/README.md)."""
    rule = {"sliding_tile": "tile", "vsa": "cube"}.get(backend.name)
    if rule is None:
        return torch.arange(layout.num_tokens)
    members = oracle_peers.chunk_members(layout, f"cubes:{getattr(backend.params, rule)}")
    return torch.tensor([t for c in members for t in c])


def differentiable_flex(q, k, v, block_mask, scale):
    """FlexAttention's own operator with autograd on CPU (the public function refuses CPU inputs that require
    grad); the same math fallback the forward uses, so the block mask's semantics are those under test."""
    return flex_attention_op(q, k, v, lambda score, b, h, m, n: score, block_mask.as_tuple(), scale,
                             {"OUTPUT_LOGSUMEXP": True, "OUTPUT_MAX": False})[0]


@cases
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_flex_output_equals_oracle(i, name, params, block, layout, dtype, tile):
    """The flex path (and not the gathered one) runs, and equals the float64 oracle (f32 1e-5)."""
    tile(block)
    q, k, v, pattern = inputs(i, name, params, layout, dtype)
    backend = mocbench.get_backend(name, impl="flex_eager", **params)
    assert backend.implementation("cpu") == "flex_eager" and backend.prepare(q, k, layout).flex.block == block
    out = backend(q, k, v, layout)
    want = oracle_peers.output(name, params, q.double(), k.double(), v.double(), layout, pattern)
    assert out.dtype == dtype and max_err(out, want) <= (1e-5 if dtype == torch.float32 else 1e-10)


@cases
def test_flex_gradients_equal_oracle(i, name, params, block, layout, tile, monkeypatch):
    """dq, dk, dv through the flex path (kernel-order permutation, block mask, un-permutation; VSA's coarse
    term) equal autograd through the oracle."""
    tile(block)
    monkeypatch.setattr(flex_blocks, "eager_flex_attention", differentiable_flex)
    q, k, v, pattern = inputs(i, name, params, layout, torch.float64)
    backend = mocbench.get_backend(name, impl="flex_eager", **params)
    plan = backend.prepare(q, k, layout)
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out = backend.forward(q, k, v, plan)
    q0, k0, v0 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    want = oracle_peers.output(name, params, q0, k0, v0, layout, pattern)
    assert max_err(out, want) <= 1e-10
    g = seeded_grad_out(q.shape, i)
    (out * g).sum().backward()
    (want * g).sum().backward()
    for n, a, b in (("q", q.grad, q0.grad), ("k", k.grad, k0.grad), ("v", v.grad, v0.grad)):
        assert max_err(a, b) <= 1e-10, f"grad {n}"


def grids_of(pattern: torch.Tensor, order: torch.Tensor, block: int, G: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(full, partial) (G, QB, KB) of the oracle pattern in kernel order, counted pair by pair."""
    B, H, L, _ = pattern.shape
    nb = -(-L // block)
    pad = torch.zeros(B * H, nb * block, nb * block)
    pad[:, :L, :L] = pattern[:, :, order][:, :, :, order].reshape(B * H, L, L).double()
    counts = pad.view(B * H, nb, block, nb, block).sum((2, 4))
    size = torch.full((nb,), block, dtype=torch.float64)
    size[-1] = L - block * (nb - 1)
    full = counts == size[:, None] * size[None, :]
    partial = (counts > 0) & ~full
    return (full[:1], partial[:1]) if G == 1 else (full, partial)


@cases
def test_tiles_and_mask_mod_follow_the_oracle(i, name, params, block, layout, tile):
    """In kernel order: each tile is full / partial / absent as the oracle's pattern says; the visited tiles are
    the block-density grid (stats' block density at this tile); ``mask_mod`` on every pair is the oracle's
    predicate, and so is the CPU kernel's emulated mask."""
    tile(block)
    q, k, _, pattern = inputs(i, name, params, layout)
    backend = mocbench.get_backend(name, impl="flex_eager", **params)
    fb = backend.prepare(q, k, layout).flex
    order = kernel_order(backend, layout)
    if fb.order is not None:
        assert torch.equal(fb.order, order)
    B, H, L, _ = pattern.shape
    full, partial = grids_of(pattern, order, block, fb.full.shape[0])
    assert torch.equal(fb.full, full) and torch.equal(fb.partial, partial)
    assert fb.tiles[0] > 0 or fb.tiles[1] > 0
    density = backend.stats(q, k, layout, block_shape=(block, block)).block_density
    assert density == pytest.approx(float((full | partial).double().mean()), abs=1e-12)
    r = torch.arange(L)
    for b in range(B):
        for h in range(H):
            want = pattern[b, h][order][:, order]
            bt, ht = torch.tensor(b), torch.tensor(h)
            assert torch.equal(fb.mask_mod(bt, ht, r[:, None], r[None, :]), want), (b, h)
            assert torch.equal(fb.block_mask.mask_mod(bt, ht, r[:, None], r[None, :]), want), (b, h)


@pytest.mark.parametrize("name,params", [("sliding_tile", {"tile": "2,2,2", "window": "2,1,2"}),
                                         ("vsa", {"cube": "2,2,2", "top_k": 3})])
def test_tile_aligned_layouts_have_no_partial_tile(name, params, tile):
    """Captions of one tile and frames, rows, columns multiples of the cube: in the kernel's order every tile the
    kernel visits is full, so mask_mod never runs (STA by construction; VSA's fine stage likewise)."""
    tile(8)
    layout = TokenLayout.multi_shot(text_tokens=8, frames=4, frame_shape=(2, 4), shots=2)
    q, k, _ = qkv((1, 2, layout.num_tokens, 8), 5)
    backend = mocbench.get_backend(name, impl="flex_eager", **params)
    full, partial = backend.prepare(q, k, layout).flex.tiles
    assert partial == 0 and full > 0
    radial = mocbench.get_backend("radial", impl="flex_eager", dense_frames=0).prepare(q, k, layout).flex
    assert radial.tiles[1] > 0  # a pattern that is not tile-aligned has partial tiles on the same layout


def test_eager_flex_runs_the_kernels_tiles_not_only_the_predicate(tile):
    """The eager path follows the tile classification: dropping one visited tile, or declaring a partial tile
    full, changes the output (so the output tests above check the tiles a compiled kernel would skip or take)."""
    tile(8)
    layout = random_layout(random.Random(2650), "interleaved", geometry=True)
    sta = mocbench.get_backend("sliding_tile", impl="flex_eager", tile="1,2,2", window="3,1,3")
    q, k, v = qkv((1, 2, layout.num_tokens, 8), 11, torch.float64)
    good = sta.flex_blocks(layout, "cpu", 8)
    counts = sta.block_counts(layout, 8).clone()
    want = flex_blocks.run(q, k, v, good, 0.3)
    rule, order = sta.rule(layout), sta.kernel_order(layout)
    part = good.partial[0].nonzero()[0]
    for value in (0.0, float(8 * 8)):
        bad_counts = counts.clone()
        bad_counts[0, part[0], part[1]] = value
        bad = flex_blocks.build(bad_counts, rule, layout.num_tokens, block=8, order=order, compiled=False)
        assert max_err(flex_blocks.run(q, k, v, bad, 0.3), want) > 1e-3, value


def test_flex_where_it_cannot_run_is_one_clear_error():
    layout = TokenLayout.multi_shot(text_tokens=2, frames=2, frame_shape=(2, 2), shots=2)
    q, k, v = (t.requires_grad_() for t in qkv((1, 1, layout.num_tokens, 4), 0))
    for name in ("sliding_tile", "radial", "svg", "vsa", "vmoba"):
        flex = mocbench.get_backend(name, impl="flex")
        for impl in ("flex", "flex_eager"):
            with pytest.raises(mocbench.UnsupportedError, match=rf"impl '{impl}': no backward pass on cpu"):
                mocbench.get_backend(name, impl=impl)(q, k, v, layout)
        gather = mocbench.get_backend(name, impl="gather")
        assert "impl 'gather': device 'cuda' not supported (supports cpu)" in gather.not_supported_reasons(
            device="cuda", layout=layout)
        if not torch.cuda.is_available():
            assert "impl 'flex': CUDA is not available on this machine" in flex.not_supported_reasons(device="cuda")
        auto = mocbench.get_backend(name)
        assert (auto.implementation("cpu"), auto.implementation("cuda")) == ("gather", "flex")
        with pytest.raises(ValueError, match=r"impl must be 'auto' or one of \['flex', 'flex_eager', 'gather'\], got 'fused'"):
            mocbench.get_backend(name, impl="fused")
    with torch.no_grad():  # forward only: flex_eager runs on CPU
        assert mocbench.get_backend("radial", impl="flex_eager")(q, k, v, layout).shape == q.shape


def test_backends_listing_shows_each_peer_impl_and_where_it_was_measured(capsys):
    assert main(["backends", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)["implementations"]
    for name in ("sliding_tile", "radial", "svg", "vsa", "vmoba"):
        rows = {r["impl"]: r for r in listing[name]}
        assert rows["flex"]["measured"] == "not yet measured on a GPU" and rows["flex"]["auto_order"] == "cuda #1"
        assert rows["flex_eager"]["auto_order"] == "opt-in"
        assert rows["gather"]["auto_order"] == "cpu #1" and rows["gather"]["available"]


def test_flex_workspace_counts_the_eager_scores_and_not_the_compiled_kernels():
    """Uncompiled FlexAttention holds (B, H, L, L) scores three times over (float32); compiled, the kernel is fused."""
    layout = TokenLayout.multi_shot(text_tokens=4, frames=8, frame_shape=(4, 8), shots=2)
    L = layout.num_tokens
    for name in ("sliding_tile", "radial", "svg", "vsa", "vmoba"):
        kw = {"batch": 1, "heads": 2, "head_dim": 16, "dtype": torch.float32, "device": "cpu"}
        eager = mocbench.get_backend(name, impl="flex_eager").workspace_bytes(layout, **kw)
        compiled = mocbench.get_backend(name, impl="flex").workspace_bytes(layout, **kw)
        assert eager - compiled >= 2 * L * L * 3 * 4 and compiled > 0, (name, eager, compiled)


COMPILED_CASES = {
    "sliding_tile": {"tile": "2,4,4", "window": "3,1,1"},
    "radial": {"dense_frames": 1, "decay": 0.5},
    "svg": {"width": 1.5},
    "vsa": {"cube": "2,4,4", "top_k": 3},
    "vmoba": {"layer": 2, "st_chunk": "2,4,4", "select": "topk", "top_k": 2},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(COMPILED_CASES))
def test_compiled_flex_on_cpu_equals_oracle(name):
    """impl ``flex`` on CPU runs compiled FlexAttention, which itself skips absent tiles and the mask_mod of full
    ones (128-token tiles): its output equals the oracle, so no tile is wrongly absent or wrongly full."""
    layout = TokenLayout.multi_shot(text_tokens=[5, 3], frames=[8, 6], frame_shape=(8, 8), shots=2)
    params = COMPILED_CASES[name]
    q, k, v, pattern = inputs(7, name, params, layout, torch.float32)
    backend = mocbench.get_backend(name, impl="flex", **params)
    assert backend.prepare(q, k, layout).flex.compiled
    with torch.no_grad():
        out = backend(q, k, v, layout)
    want = oracle_peers.output(name, params, q.double(), k.double(), v.double(), layout, pattern)
    assert max_err(out, want) <= 1e-5
    # a new call (new routing, new mask_mod closure) reuses the compiled graph: no silent recompile per call
    q2, k2, v2, pattern2 = inputs(9, name, params, layout, torch.float32)  # same batch size as case 7
    with torch._dynamo.config.patch(error_on_recompile=True), torch.no_grad():
        out2 = backend(q2, k2, v2, layout)
    assert max_err(out2, oracle_peers.output(name, params, q2.double(), k2.double(), v2.double(), layout,
                                             pattern2)) <= 1e-5


def test_peer_measured_table_matches_its_stores():
    """Every row of peer_impl.MEASURED is backed by ok rows of that family and impl on that device in the
    named store, and the listing prints it."""
    root = Path(__file__).resolve().parents[1]
    assert MEASURED
    for m in MEASURED:
        with open(root / m.store, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["status"] == "ok" and r["backend"] == m.backend
                    and r["impl"] == m.impl]
        assert rows, f"{m.store} has no ok rows of {m.backend} impl {m.impl}"
        assert all(r["device"] == m.device_type and r["finished_at"].startswith(m.date) for r in rows)
        assert any(m.device in (r["env_cpu"], r["env_gpu"]) for r in rows)
        assert m.store in measured_note(m.backend, m.impl, ("cpu",))
