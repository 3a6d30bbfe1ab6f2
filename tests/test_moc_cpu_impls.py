"""The fast CPU MoC impls ('fused', 'gather') against impl 'reference' on the *same* routing plan.

Both impls get the plan from one ``backend.prepare`` call, so routing near-ties cannot make them
differ; any difference is the attention itself. Covers every chunking rule (incl. ``fixed:m``
chunks spanning two shots, which are partly anchored with ``local_anchor="shot"``), every text
placement (interleaved, global caption in front or at the back), anchors on/off, causal on/off,
top_k 0..>C, batch/heads > 1, float32/float64/bfloat16, gradients of q, k, v, training-mode
drop-in/drop-off plans, and the sort/bucket code paths.
'fused' is built at first use (a C++ compiler is needed); where it cannot be, its tests skip with
the build error as the reason.
"""

from __future__ import annotations

import random

import pytest
import torch

import mocbench
from mocbench import TokenLayout
from mocbench.backends.moc import fused, gather, gather_index
from mocbench.backends.moc.impls import IMPLS, resolve_impl

_FUSED_MISSING = "; ".join(IMPLS["fused"].not_supported_reasons(device="cpu")) or None
FAST = ["gather", pytest.param("fused", marks=pytest.mark.skipif(_FUSED_MISSING is not None,
                                                                  reason=str(_FUSED_MISSING)))]

RULES = ("shot", "frame", "frames:2", "tokens:3", "tokens:5", "fixed:4", "fixed:7", "fixed:11")
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
N_CASES = 48


def _layout(rng: random.Random, kind: str) -> TokenLayout:
    tpf = rng.randint(1, 6)
    if kind == "single":
        return TokenLayout.single_shot(text_tokens=rng.randint(0, 5), frames=rng.randint(1, 5), tokens_per_frame=tpf)
    shots = rng.randint(2, 4)
    frames = [rng.randint(1, 4) for _ in range(shots)]
    if kind == "interleaved":
        return TokenLayout.multi_shot(text_tokens=[rng.randint(0, 5) for _ in range(shots)], frames=frames,
                                      tokens_per_frame=tpf, text_placement="interleaved")
    return TokenLayout.multi_shot(text_tokens=[rng.randint(0, 6)], frames=frames, tokens_per_frame=tpf,
                                  text_placement=kind)


def _case(i: int):
    rng = random.Random(7000 + i)
    layout = _layout(rng, ("single", "interleaved", ("front", "back")[(i // 3) % 2])[i % 3])
    rule = RULES[i % len(RULES)]
    C = layout.chunks(rule).num_chunks
    top_k = (0, C + rng.randint(0, 2), rng.randint(1, max(1, C - 1)), 1)[i % 4]
    params = dict(top_k=top_k, chunking=rule, text_anchor=(i // 2) % 2 == 0,
                  local_anchor=(None, "shot", "chunk")[(i // 3) % 3], causal=(i // 5) % 2 == 0)
    shape = (rng.choice((1, 2)), rng.choice((1, 2, 3)), layout.num_tokens, rng.choice((4, 8, 13, 16)))
    return layout, params, shape


def _inputs(shape, seed, dtype, grad=False):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_(grad) for _ in range(3))


def _both(impl, layout, params, q, k, v, *, training=False, seed=0):
    backend = mocbench.get_backend("moc", impl="reference", **params)
    plan = backend.prepare(q.detach(), k.detach(), layout, training=training,
                           generator=torch.Generator().manual_seed(seed) if training else None)
    return IMPLS["reference"].forward(q, k, v, plan), IMPLS[impl].forward(q, k, v, plan), plan


def _check(impl, layout, params, shape, seed, dtype, *, grad=True, training=False):
    q, k, v = _inputs(shape, seed, dtype, grad)
    ref, out, plan = _both(impl, layout, params, q, k, v, training=training, seed=seed)
    tol = TOL[dtype]
    assert out.dtype == dtype and out.shape == q.shape
    assert (out - ref).abs().max().item() <= tol
    if grad:
        g = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).to(dtype)
        g_ref = torch.autograd.grad(ref, (q, k, v), g)
        g_out = torch.autograd.grad(out, (q, k, v), g)
        for name, a, b in zip("qkv", g_ref, g_out):
            assert (a - b).abs().max().item() <= 10 * tol, f"d{name}"
    return plan


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("i", range(N_CASES))
def test_matches_reference_float64(impl, i):
    layout, params, shape = _case(i)
    _check(impl, layout, params, shape, 100 + i, torch.float64)


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("i", range(0, N_CASES, 2))
def test_matches_reference_float32(impl, i):
    layout, params, shape = _case(i)
    _check(impl, layout, params, shape, 300 + i, torch.float32)


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("i", range(12))
def test_training_plans_with_drop_in_and_drop_off(impl, i):
    layout, params, shape = _case(i + 5)
    params = {**params, "top_k": max(1, params["top_k"]), "p_drop_off": 0.4, "p_drop_in": 0.5, "n_drop_in": 2}
    plan = _check(impl, layout, params, shape, 500 + i, torch.float64, training=True)
    max_cand = int(plan.structure.candidate.sum(1).max())  # routing slots are capped at this
    assert plan.selected.shape[-1] == min(params["top_k"], max_cand) + min(2, plan.structure.num_chunks)


def _spanning_layout():
    # 2 frames x 5 tokens per shot: fixed:7 chunks straddle every shot boundary (and the captions)
    return TokenLayout.multi_shot(text_tokens=[3, 2, 4], frames=[2, 2, 2], tokens_per_frame=5)


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("text_anchor", [True, False])
@pytest.mark.parametrize("causal", [True, False])
def test_partly_anchored_fixed_chunks(impl, text_anchor, causal):
    layout = _spanning_layout()
    params = dict(top_k=3, chunking="fixed:7", local_anchor="shot", text_anchor=text_anchor, causal=causal)
    structure = mocbench.get_backend("moc", **params).structure(layout)
    unc, size = structure.uncovered, structure.chunks.sizes
    assert bool(((unc > 0) & (unc < size[None, :]) & structure.candidate).any()), "no partly anchored candidate"
    _check(impl, layout, params, (2, 2, layout.num_tokens, 8), 11, torch.float64)
    _check(impl, layout, params, (1, 2, layout.num_tokens, 8), 12, torch.float32)


@pytest.mark.parametrize("impl", FAST)
def test_dense_equivalence(impl):
    """top_k >= C, causal off, text anchor on: MoC is dense attention (moc-spec §5)."""
    layout = TokenLayout.multi_shot(text_tokens=[4, 3], frames=[3, 2], tokens_per_frame=4)
    q, k, v = _inputs((2, 2, layout.num_tokens, 8), 3, torch.float64)
    out = mocbench.get_backend("moc", impl=impl, top_k=99, causal=False)(q, k, v, layout)
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert (out - dense).abs().max().item() <= 1e-12


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_within_declared_tolerance(impl, dtype):
    layout, params, shape = _case(3)
    q, k, v = _inputs(shape, 9, dtype)
    backend = mocbench.get_backend("moc", impl=impl, **params)
    plan = backend.prepare(q, k, layout)
    out = backend.forward(q, k, v, plan)
    oracle = IMPLS["reference"].forward(q.double(), k.double(), v.double(), plan)
    assert out.dtype == dtype
    assert (out.double() - oracle).abs().max().item() <= backend.tolerance[dtype]


def test_gather_code_paths_sort_and_many_buckets(monkeypatch):
    """The sort-based grouping (long streams), one group per bucket and narrow merge bands."""
    monkeypatch.setattr(gather_index, "_HOT_MAP_MAX", 0)
    monkeypatch.setattr(gather_index, "_BUCKET_MAX_GROUPS", 1)
    monkeypatch.setattr(gather, "_SLAB_BYTES", 64)
    for i in (2, 7, 13, 22):
        layout, params, shape = _case(i)
        _check("gather", layout, params, shape, 700 + i, torch.float64)
    layout = _spanning_layout()
    _check("gather", layout, dict(top_k=2, chunking="fixed:7", local_anchor="shot"), (2, 1, layout.num_tokens, 4), 5,
           torch.float64, training=False)


@pytest.mark.parametrize("impl", FAST)
def test_duplicate_and_empty_slots_in_hand_made_plan(impl):
    """A plan whose selected has duplicates and -1 anywhere: same result as the mask reference."""
    layout = TokenLayout.multi_shot(text_tokens=[2, 2], frames=[3, 3], tokens_per_frame=3)
    q, k, v = _inputs((1, 2, layout.num_tokens, 8), 21, torch.float64)
    backend = mocbench.get_backend("moc", impl="reference", top_k=2, causal=False)
    plan = backend.prepare(q, k, layout)
    sel = plan.selected.clone()
    sel[..., 1] = torch.where(torch.arange(layout.num_tokens) % 3 == 0, sel[..., 0], sel[..., 1])
    sel[..., 0] = torch.where(torch.arange(layout.num_tokens) % 4 == 1, -1, sel[..., 0])
    plan.selected = sel
    ref = IMPLS["reference"].forward(q, k, v, plan)
    assert (IMPLS[impl].forward(q, k, v, plan) - ref).abs().max().item() <= 1e-10


@pytest.mark.parametrize(("impl", "state_type"), [("gather", gather.GatherState), pytest.param(
    "fused", fused.FusedState, marks=pytest.mark.skipif(_FUSED_MISSING is not None, reason=str(_FUSED_MISSING)))])
def test_plan_state(impl, state_type):
    layout, params, shape = _case(4)
    q, k, v = _inputs(shape, 31, torch.float32)
    backend = mocbench.get_backend("moc", **{**params, "impl": impl})
    plan = backend.prepare(q, k, layout)
    assert plan.impl == impl and isinstance(plan.impl_state, state_type)
    ref = IMPLS["reference"].forward(q, k, v, plan)
    assert (backend.forward(q, k, v, plan) - ref).abs().max().item() <= 1e-5
    assert (backend(q, k, v, layout) - ref).abs().max().item() <= 1e-5


def test_auto_resolution_prefers_fused_when_it_builds():
    expected = "fused" if _FUSED_MISSING is None else "gather"
    assert resolve_impl("auto", "cpu").name == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_auto_with_no_fitting_impl_lists_every_candidates_reasons():
    """impl='auto' never falls back silently: when no candidate fits, the error names each one's reasons."""
    with pytest.raises(ValueError) as err:
        resolve_impl("auto", "cuda", dtype=torch.float16)
    msg = str(err.value)
    assert "impl 'flex': CUDA is not available" in msg and "impl 'reference': CUDA is not available" in msg


def test_impls_declare_capabilities_in_the_backends_vocabulary():
    """One vocabulary: every impl's refusals come from mocbench.Capabilities (devices, dtypes, backward)."""
    from mocbench.backend import Capabilities

    assert all(isinstance(impl.caps, Capabilities) for impl in IMPLS.values())
    flex = IMPLS["flex"].not_supported_reasons(device="cpu", dtype=torch.float32, requires_grad=True)
    assert flex == ["impl 'flex': no backward pass on cpu (inputs require grad; backward runs on cuda)"]
    triton = IMPLS["triton"].not_supported_reasons(device="cpu", dtype=torch.float64)
    assert any("device 'cpu' not supported" in r for r in triton) and any("float64 not supported" in r for r in triton)
