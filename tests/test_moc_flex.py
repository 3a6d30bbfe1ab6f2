"""MoC on FlexAttention (impls "flex", compiled, and "flex_eager"): the BlockMask built from routing is
exact, outputs and gradients match the reference. Eager FlexAttention ignores block sparsity, so the
block structure is checked directly against the materialised pattern and the eager impl against the
reference on many random cases; compiled cases on CPU (one compile per shape) check that the kernel
honours the block mask. CUDA cases (bf16/fp16, head_dim 64/128) skip without a GPU."""

import random

import pytest
import torch

import mocbench
from mocbench.backends.moc.flex import build_block_mask
from mocbench.backends.moc.impls import IMPLS
from mocbench.backends.moc.reference import moc_mask


def random_case(seed):
    rng = random.Random(seed)
    shots = rng.randint(1, 3)
    placement = rng.choice(["interleaved", "front", "back"])
    text = [rng.randint(0, 6) for _ in range(shots)] if placement == "interleaved" else [rng.randint(1, 9)]
    frames = [rng.randint(1, 4) for _ in range(shots)]
    lay = mocbench.TokenLayout.multi_shot(text_tokens=text, frames=frames, tokens_per_frame=rng.randint(2, 8),
                                          text_placement=placement)
    params = dict(top_k=rng.randint(0, 4), chunking=rng.choice(["shot", "frame", "frames:2", "tokens:5", "fixed:6"]),
                  text_anchor=rng.random() < 0.7, local_anchor=rng.choice([None, "shot", "chunk"]),
                  causal=rng.random() < 0.5)
    return lay, params, rng.choice([8, 16])


def block_sets(bm):
    """(B, H, QB, KB) bool: partial blocks and full blocks, from the BlockMask index lists."""
    def dense(num, idx):
        out = torch.zeros(*idx.shape, dtype=torch.bool)
        take = torch.arange(idx.shape[-1]) < num[..., None]
        return out.scatter_(-1, idx.long(), take)  # scatter False for unused slots first, True after
    return dense(bm.kv_num_blocks, bm.kv_indices), dense(bm.full_kv_num_blocks, bm.full_kv_indices)


@pytest.mark.parametrize("seed", range(30))
def test_block_mask_covers_pattern_exactly(seed):
    lay, params, block = random_case(seed)
    b = mocbench.get_backend("moc", impl="flex_eager", **params)
    q, k = (torch.randn(2, 2, lay.num_tokens, 8, generator=torch.Generator().manual_seed(seed)) for _ in range(2))
    plan = b.prepare(q, k, lay)
    bm = build_block_mask(plan, block=block)
    partial, full = block_sets(bm)
    L, QB = lay.num_tokens, -(-lay.num_tokens // block)
    pat = torch.zeros(2, 2, QB * block, QB * block, dtype=torch.bool)
    pat[..., :L, :L] = moc_mask(plan)
    tiles = pat.view(2, 2, QB, block, QB, block)
    any_true = tiles.any(3).any(-1)
    inside = torch.ones_like(pat)
    inside[..., :L, :L] = pat[..., :L, :L]
    all_true = inside.view(2, 2, QB, block, QB, block).all(3).all(-1)
    assert not (partial & full).any(), "a block is listed as both partial and full"
    assert torch.equal(partial | full, any_true), "active blocks must be exactly the blocks with attended pairs"
    assert (full <= all_true).all(), "a full block skips mask_mod, so every pair in it must be attended"


@pytest.mark.parametrize("seed", range(12))
def test_flex_matches_reference_forward(seed):
    lay, params, _ = random_case(100 + seed)
    flex = mocbench.get_backend("moc", impl="flex_eager", **params)
    ref = mocbench.get_backend("moc", impl="reference", **params)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, lay.num_tokens, 8, generator=g) for _ in range(3))
    torch.testing.assert_close(flex(q, k, v, lay), ref(q, k, v, lay), atol=1e-5, rtol=0)


@pytest.mark.parametrize("impl", ["flex", "flex_eager"])
def test_flex_on_cpu_refuses_backward_with_a_reason(impl):
    lay, params, _ = random_case(3)
    b = mocbench.get_backend("moc", impl=impl, **params)
    q = torch.randn(1, 1, lay.num_tokens, 8, requires_grad=True)
    assert any("no backward pass on cpu" in r for r in b.not_supported_reasons(q))
    with pytest.raises(mocbench.UnsupportedError, match="no backward pass on cpu"):
        b(q, q, q, lay)


def test_flex_uses_a_training_plan_verbatim():
    lay, params, _ = random_case(7)
    params.update(top_k=2, p_drop_off=0.5, p_drop_in=0.5, n_drop_in=2, seed=3)
    b = mocbench.get_backend("moc", impl="flex_eager", **params)
    q, k, v = (torch.randn(1, 2, lay.num_tokens, 8) for _ in range(3))
    plan = b.prepare(q, k, lay, training=True)
    torch.testing.assert_close(IMPLS["flex_eager"].forward(q, k, v, plan), IMPLS["reference"].forward(q, k, v, plan),
                               atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("routing", ["token", "tile"])
def test_compiled_flex_on_cpu_honours_the_block_mask(routing):
    """impl "flex" on CPU runs compiled FlexAttention, which skips inactive blocks and the mask_mod of full
    ones, so this catches a block mask that is too sparse or a block wrongly declared full."""
    lay = mocbench.TokenLayout.multi_shot(text_tokens=[6, 4, 5], frames=[3, 2, 3], tokens_per_frame=40)
    extra = {"routing": "tile", "tile": 16} if routing == "tile" else {}
    b = mocbench.get_backend("moc", impl="flex", top_k=2, chunking="frame", **extra)
    q, k, v = (torch.randn(1, 2, lay.num_tokens, 16, generator=torch.Generator().manual_seed(5)) for _ in range(3))
    plan = b.prepare(q, k, lay)
    assert plan.impl == "flex"
    torch.testing.assert_close(b.forward(q, k, v, plan), IMPLS["reference"].forward(q, k, v, plan),
                               atol=1e-5, rtol=0)
    # every call builds a new mask_mod closure over new routing: it must reuse the compiled graph (a recompile
    # per call would cost seconds and, past dynamo's limit, fall back to eager without a word)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed in range(3):
            q, k, v = (torch.randn(1, 2, lay.num_tokens, 16, generator=torch.Generator().manual_seed(seed))
                       for _ in range(3))
            plan = b.prepare(q, k, lay)
            torch.testing.assert_close(b.forward(q, k, v, plan), IMPLS["reference"].forward(q, k, v, plan),
                                       atol=1e-5, rtol=0)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_flex_on_cuda_matches_float64_reference(dtype, head_dim):
    lay = mocbench.TokenLayout.multi_shot(text_tokens=[16, 16, 16], frames=[4, 4, 4], tokens_per_frame=96)
    b = mocbench.get_backend("moc", impl="flex", top_k=3, chunking="frame")
    q, k, v = (torch.randn(2, 4, lay.num_tokens, head_dim, device="cuda", dtype=dtype, requires_grad=True)
               for _ in range(3))
    plan = b.prepare(q, k, lay)
    out = b.forward(q, k, v, plan)
    ref = IMPLS["reference"].forward(*(t.double() for t in (q, k, v)), plan)
    assert (out.double() - ref).abs().max().item() <= b.tolerance[dtype]
    out.float().square().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("tile", [8, 16])
def test_flex_tile_routing_on_the_block_grid_has_only_full_blocks(tile):
    """Tile routing with captions, frames and tiles on the 8-block grid: every routed block lies in one chunk
    routed by all queries of its q-block, so every active block is full (mask_mod never runs), and the
    output still equals the reference."""
    lay = mocbench.TokenLayout.multi_shot(text_tokens=[8, 8, 8], frames=[2, 3, 2], tokens_per_frame=16)
    b = mocbench.get_backend("moc", impl="flex_eager", top_k=2, chunking="frame", routing="tile", tile=tile)
    q, k, v = (torch.randn(2, 2, lay.num_tokens, 8, generator=torch.Generator().manual_seed(tile)) for _ in range(3))
    plan = b.prepare(q, k, lay)
    partial, full = block_sets(build_block_mask(plan, block=8))
    assert not partial.any() and full.any()
    pat = moc_mask(plan).view(2, 2, lay.num_tokens // 8, 8, lay.num_tokens // 8, 8)
    assert torch.equal(full, pat.any(3).any(-1)) and bool(pat.all(3).all(-1)[full].all())
    torch.testing.assert_close(IMPLS["flex_eager"].forward(q, k, v, plan), IMPLS["reference"].forward(q, k, v, plan),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", range(10))
def test_block_mask_with_tile_routing_covers_pattern_exactly(seed):
    """Random (mostly misaligned) layouts with tile routing: active = blocks with pairs, full only where every
    pair is attended -- including blocks declared full from routing."""
    lay, params, block = random_case(500 + seed)
    params.update(routing="tile", tile=random.Random(seed).choice((2, 4, 8, 16)), top_k=max(1, params["top_k"]))
    b = mocbench.get_backend("moc", impl="flex_eager", **params)
    q, k = (torch.randn(2, 2, lay.num_tokens, 8, generator=torch.Generator().manual_seed(seed)) for _ in range(2))
    plan = b.prepare(q, k, lay)
    partial, full = block_sets(build_block_mask(plan, block=block))
    L, QB = lay.num_tokens, -(-lay.num_tokens // block)
    pat = torch.zeros(2, 2, QB * block, QB * block, dtype=torch.bool)
    pat[..., :L, :L] = moc_mask(plan)
    inside = torch.ones_like(pat)
    inside[..., :L, :L] = pat[..., :L, :L]
    assert not (partial & full).any()
    assert torch.equal(partial | full, pat.view(2, 2, QB, block, QB, block).any(3).any(-1))
    assert (full <= inside.view(2, 2, QB, block, QB, block).all(3).all(-1)).all()
