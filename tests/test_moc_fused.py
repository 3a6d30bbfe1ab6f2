"""MoC impl 'fused' (C++ CPU kernel): behaviour beyond the oracle sweeps in test_moc_cpu_impls.py.

Tile boundaries (groups larger than one tile, chunks larger than the score-tile budget), work
items (row ranges) that cut groups, the kernel's own input checks, and what happens when the kernel cannot
be built: impl="fused" refuses with the reason, impl="auto" warns and runs the next impl.
"""

from __future__ import annotations

import pytest
import torch

import mocbench
from mocbench import TokenLayout
from mocbench.backend import UnsupportedError
from mocbench.backends.moc import cpu_ext, fused, impls
from mocbench.backends.moc.impls import IMPLS

_MISSING = "; ".join(IMPLS["fused"].not_supported_reasons(device="cpu")) or None
needs_kernel = pytest.mark.skipif(_MISSING is not None, reason=str(_MISSING))


def _qkv(shape, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for _ in range(3))


def _vs_reference(layout, params, shape, seed, dtype, tol):
    q, k, v = _qkv(shape, seed, dtype)
    plan = mocbench.get_backend("moc", impl="reference", **params).prepare(q, k, layout)
    ref = IMPLS["reference"].forward(q, k, v, plan)
    out = IMPLS["fused"].forward(q, k, v, plan)
    assert (out - ref).abs().max().item() <= tol
    return plan


@needs_kernel
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_groups_span_several_tiles(dtype, tol):
    """600 queries route to the same early chunk (causal, top_k >= candidates): > 2 tiles of 256."""
    layout = TokenLayout.single_shot(text_tokens=3, frames=40, tokens_per_frame=16)
    plan = _vs_reference(layout, dict(top_k=64, chunking="frame"), (1, 2, layout.num_tokens, 16), 1, dtype, tol)
    st = fused.prepare_fused(plan)
    assert int((st.group_ptr[1:] - st.group_ptr[:-1]).max()) > 512


@needs_kernel
@pytest.mark.parametrize("threads", [1, 3])
def test_row_range_work_items_cut_groups_exactly(threads):
    """Many more row ranges than heads: every (bh, chunk) group is split across items."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        layout = TokenLayout.multi_shot(text_tokens=[3, 2], frames=[9, 8], tokens_per_frame=7)
        plan = _vs_reference(layout, dict(top_k=4, chunking="frame", causal=False), (1, 1, layout.num_tokens, 16),
                             8, torch.float64, 1e-10)
        assert plan is not None
        st = fused.prepare_fused(plan)
        assert st.row_bounds.shape == (1, 4 * threads + 1)
    finally:
        torch.set_num_threads(old)


@needs_kernel
@pytest.mark.parametrize("max_keys", [0, 10**9])
def test_anchor_groups_through_either_path(monkeypatch, max_keys):
    """Anchor groups run in the C++ kernel or (wider ones) in ATen's flash kernel: same values."""
    monkeypatch.setattr(fused, "_ANCHOR_KERNEL_MAX_KEYS", max_keys)
    layout = TokenLayout.multi_shot(text_tokens=[3, 4, 2], frames=[3, 2, 4], tokens_per_frame=6)
    for local in ("shot", "chunk"):
        _vs_reference(layout, dict(top_k=2, chunking="frame", local_anchor=local), (2, 2, layout.num_tokens, 8), 15,
                      torch.float64, 1e-10)


@needs_kernel
def test_chunks_larger_than_the_score_tile_budget():
    """A 1100-token shot chunk: tiles shrink to fit; values unchanged."""
    layout = TokenLayout.multi_shot(text_tokens=[2, 3, 2], frames=[11, 10, 9], tokens_per_frame=100)
    _vs_reference(layout, dict(top_k=2, chunking="shot", local_anchor="chunk", causal=False),
                  (1, 1, layout.num_tokens, 8), 2, torch.float64, 1e-10)


@needs_kernel
@pytest.mark.parametrize("threads", [1, 3])
def test_backward_per_thread_dq_buffers_across_heads(threads):
    """dq is accumulated per thread and head: several heads and thread counts give the oracle's grads."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        layout = TokenLayout.single_shot(text_tokens=3, frames=9, tokens_per_frame=10)
        q, k, v = (t.requires_grad_() for t in _qkv((1, 3, layout.num_tokens, 16), 12))
        plan = mocbench.get_backend("moc", impl="fused", top_k=3, chunking="frame").prepare(q, k, layout)
        g = torch.randn(q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(13))
        ref = torch.autograd.grad(IMPLS["reference"].forward(q, k, v, plan), (q, k, v), g)
        for _ in range(2):  # a second call reuses nothing stale
            out = torch.autograd.grad(IMPLS["fused"].forward(q, k, v, plan), (q, k, v), g)
            for a, b in zip(ref, out):
                assert (a - b).abs().max().item() <= 1e-10
    finally:
        torch.set_num_threads(old)


@needs_kernel
def test_gradients_through_fused_backward_match_reference():
    layout = TokenLayout.multi_shot(text_tokens=[4, 2], frames=[5, 4], tokens_per_frame=6)
    q, k, v = (t.requires_grad_() for t in _qkv((2, 2, layout.num_tokens, 8), 3))
    plan = mocbench.get_backend("moc", impl="fused", top_k=3, chunking="fixed:5").prepare(q, k, layout)
    g = torch.randn(q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ref = torch.autograd.grad(IMPLS["reference"].forward(q, k, v, plan), (q, k, v), g)
    out = torch.autograd.grad(IMPLS["fused"].forward(q, k, v, plan), (q, k, v), g)
    for a, b in zip(ref, out):
        assert (a - b).abs().max().item() <= 1e-10


@needs_kernel
def test_routed_index_csr_and_its_input_checks():
    ext = cpu_ext.load()
    sel = torch.tensor([[[1, -1, 1], [0, 2, -1]], [[2, 2, 2], [-1, -1, 0]]])  # (BH=2, L=2, K=3)
    group_ptr, rows, bounds = ext.routed_index(sel, 3, 2)
    # groups (bh, c): (0,0):[row1] (0,1):[row0] (0,2):[row1] (1,0):[row3] (1,2):[row2]; duplicates dropped
    assert group_ptr.tolist() == [0, 1, 2, 3, 4, 4, 5]
    assert rows.tolist() == [1, 0, 1, 3, 2]
    # 2 ranges of rows per head, split at equal routed work: head 0 rows {0}:1 pair, {1}:2 pairs
    assert bounds.tolist() == [[0, 1, 2], [2, 3, 4]]
    with pytest.raises(RuntimeError, match="expected -1 or 0..2"):
        ext.routed_index(torch.tensor([[[3]]]), 3, 1)
    with pytest.raises(RuntimeError, match="int64"):
        ext.routed_index(sel.int(), 3, 1)
    with pytest.raises(RuntimeError, match="parts must be >= 1"):
        ext.routed_index(sel, 3, 0)


def test_unbuildable_kernel_refused_by_name_and_passed_over_by_auto(monkeypatch):
    monkeypatch.setitem(cpu_ext._STATE, "error", "no C++ compiler (test)")
    monkeypatch.delitem(cpu_ext._STATE, "module", raising=False)
    monkeypatch.setattr(impls, "_WARNED", set())
    layout = TokenLayout.single_shot(text_tokens=2, frames=3, tokens_per_frame=4)
    q, k, v = _qkv((1, 1, layout.num_tokens, 8), 7, torch.float32)
    named = mocbench.get_backend("moc", impl="fused", top_k=1)
    assert any("no C++ compiler (test)" in r for r in named.not_supported_reasons(q))
    with pytest.raises(UnsupportedError, match=r"no C\+\+ compiler"):
        named(q, k, v, layout)
    auto = mocbench.get_backend("moc", top_k=1)
    with pytest.warns(UserWarning, match="passing over 'fused'.*no C\\+\\+ compiler"):
        plan = auto.prepare(q, k, layout)
    assert plan.impl == "gather"


def test_kernel_can_be_switched_off_by_environment(monkeypatch):
    monkeypatch.setenv("MOCBENCH_FUSED_CPU", "0")
    with pytest.raises(RuntimeError, match="MOCBENCH_FUSED_CPU=0"):
        cpu_ext._build()


def test_build_clears_what_a_killed_builder_left(monkeypatch, tmp_path):
    """torch's build lock (it would make later builds wait forever) and a partial .so without the
    completion marker are removed; the marker is written only after a complete build."""
    from torch.utils import cpp_extension

    monkeypatch.setenv("MOCBENCH_EXT_DIR", str(tmp_path))
    name = cpu_ext._name()
    build_dir = tmp_path / name
    build_dir.mkdir()
    (build_dir / "lock").write_text("")
    (build_dir / f"{name}.so").write_text("not a shared object")
    seen = {}

    def fake_load(**kw):
        seen.update(kw, lock_left=(build_dir / "lock").exists(), so_left=(build_dir / f"{name}.so").exists(),
                    marker=(build_dir / "built.ok").exists())
        return "built"

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    monkeypatch.setattr(cpp_extension, "verify_ninja_availability", lambda: None)
    assert cpu_ext._build() == "built"
    assert not seen["lock_left"] and not seen["so_left"] and not seen["marker"]
    assert seen["build_directory"] == str(build_dir) and (build_dir / "built.ok").is_file()
    assert "-fopenmp" in seen["extra_cflags"] and "-march=native" in seen["extra_cflags"]
    assert sorted(p.rsplit("/", 1)[-1] for p in seen["sources"]) == ["backward.cpp", "forward.cpp", "module.cpp"]


def test_unwritable_cache_is_reported_not_raised(monkeypatch, tmp_path):
    """An OSError while building (read-only cache, ...) makes the impl unavailable with the reason."""
    monkeypatch.setattr(cpu_ext, "_STATE", {})
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MOCBENCH_EXT_DIR", str(blocker / "sub"))  # a directory under a regular file
    reason = cpu_ext.unavailable_reason()
    assert reason is not None and ("NotADirectoryError" in reason or "FileExistsError" in reason), reason


@needs_kernel
@pytest.mark.parametrize("impl", ["fused", "gather"])
def test_plan_reused_with_other_heads_is_refused(impl):
    """A plan holds indices sized for its tensors: forward on other shapes raises, naming both."""
    layout = TokenLayout.single_shot(text_tokens=2, frames=4, tokens_per_frame=8)
    backend = mocbench.get_backend("moc", impl=impl, top_k=2, chunking="frame")
    q, k, v = _qkv((1, 4, layout.num_tokens, 8), 14, torch.float32)
    plan = backend.prepare(q, k, layout)
    with pytest.raises(ValueError, match=r"q has shape \(1, 1, 34, 8\) but the plan was prepared for .* \(1, 4, 34, 8\)"):
        backend.forward(q[:, :1], k[:, :1], v[:, :1], plan)
    with pytest.raises(ValueError, match="prepared for"):
        IMPLS[impl].forward(torch.cat([q, q], 1), torch.cat([k, k], 1), torch.cat([v, v], 1), plan)


@needs_kernel
def test_kernel_checks_its_index_arguments():
    """The C++ entry points refuse a CSR that does not fit the tensors (never read out of range)."""
    ext = cpu_ext.load()
    L, D = 6, 4
    q = torch.randn(2 * L, D)
    out, lse = torch.zeros(2 * L, D), torch.zeros(2 * L)
    offsets, skip = torch.tensor([0, 3, 6]), torch.zeros(2, dtype=torch.bool)
    rows = torch.tensor([3, 4])
    ok_ptr = torch.tensor([0, 0, 2, 2, 2])  # head 0 chunk 1 holds rows 3, 4
    bounds = torch.tensor([[0, L], [L, 2 * L]])
    ext.routed_attention(q, q, q, ok_ptr, rows, offsets, skip, bounds, 0.5, L, out, lse)
    with pytest.raises(RuntimeError, match="group_ptr has 3 entries, expected 5"):
        ext.routed_attention(q, q, q, torch.tensor([0, 0, 2]), rows, offsets, skip, bounds, 0.5, L, out, lse)
    with pytest.raises(RuntimeError, match="not an ascending row of head 1"):
        ext.routed_attention(q, q, q, torch.tensor([0, 0, 0, 0, 2]), rows, offsets, skip, bounds, 0.5, L, out, lse)
    with pytest.raises(RuntimeError, match="row_bounds must be"):
        ext.routed_attention(q, q, q, ok_ptr, rows, offsets, skip, bounds[:1], 0.5, L, out, lse)
    with pytest.raises(RuntimeError, match="offsets must run from 0 to L=6"):
        ext.routed_attention(q, q, q, ok_ptr, rows, torch.tensor([0, 3, 7]), skip, bounds, 0.5, L, out, lse)
    with pytest.raises(RuntimeError, match="anchor index 6 is outside"):
        ext.anchor_attention(q, q, q, torch.tensor([[0, 1]]), torch.tensor([[6]]), 0.5, L, out, lse)
