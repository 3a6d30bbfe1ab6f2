"""MoC impl 'triton' against impl 'reference' on the same routing plan, forward and gradients.

Triton's interpreter replaces ``triton.language`` for the whole process, so on a machine without
a GPU these tests run in a child pytest with ``TRITON_INTERPRET=1`` (started by
``test_triton_kernels_in_the_interpreter``), on CPU tensors. bfloat16 is not checked there: the
interpreter has no bfloat16 arithmetic (numpy has none); it is checked on CUDA. On a CUDA machine
(without the interpreter) the same cases run on the GPU in float32/float16/bfloat16 with head_dim
64 and 128. Without the triton package everything skips with that reason.
"""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys

import pytest
import torch

import mocbench
from mocbench import TokenLayout
from mocbench.backends.moc.impls import IMPLS
from mocbench.backends.moc.triton_impl import BLOCK_M, prepare_triton

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
ON_GPU = torch.cuda.is_available() and not INTERPRETER
RUN_HERE = HAS_TRITON and (INTERPRETER or ON_GPU)
here = pytest.mark.skipif(not RUN_HERE, reason=(
    "the triton package is not installed" if not HAS_TRITON else
    "no CUDA device: these run in the interpreter child process (test_triton_kernels_in_the_interpreter)"))
DEVICE = "cuda" if ON_GPU else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])
TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}
RULES = ("shot", "frame", "frames:2", "tokens:5", "fixed:7", "fixed:11")


@pytest.mark.skipif(not HAS_TRITON, reason="the triton package is not installed")
@pytest.mark.skipif(INTERPRETER or ON_GPU, reason="this process runs the kernel tests itself")
def test_triton_kernels_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    summary = proc.stdout.strip().splitlines()[-1]
    passed = int(summary.split(" passed")[0].split()[-1]) if " passed" in summary else 0
    assert passed >= 26, summary  # the kernel cases ran (only the CUDA-only ones may skip)


def _case(i: int):
    rng = random.Random(9100 + i)
    shots = rng.randint(1, 3)
    tpf = rng.randint(3, 9)
    if shots == 1:
        layout = TokenLayout.single_shot(text_tokens=rng.randint(0, 5), frames=rng.randint(2, 6), tokens_per_frame=tpf)
    elif i % 2:
        layout = TokenLayout.multi_shot(text_tokens=[rng.randint(0, 5) for _ in range(shots)],
                                        frames=[rng.randint(1, 4) for _ in range(shots)], tokens_per_frame=tpf)
    else:
        layout = TokenLayout.multi_shot(text_tokens=[rng.randint(0, 6)], frames=[rng.randint(1, 4) for _ in range(shots)],
                                        tokens_per_frame=tpf, text_placement=("front", "back")[(i // 2) % 2])
    rule = RULES[i % len(RULES)]
    C = layout.chunks(rule).num_chunks
    params = dict(top_k=(0, 1, rng.randint(1, max(1, C)), C + 1)[i % 4], chunking=rule,
                  text_anchor=(i // 2) % 2 == 0, local_anchor=(None, "shot", "chunk")[(i // 3) % 3],
                  causal=(i // 5) % 2 == 0)
    return layout, params


def _triton(q, k, v, plan):
    """The impl's kernel on this plan. On CUDA through the impl's single entry; in the interpreter (CPU
    tensors, which the impl does not accept: it declares CUDA) straight into its kernel."""
    if ON_GPU:
        return IMPLS["triton"].forward(q, k, v, plan)
    return IMPLS["triton"].kernel(q, k, v, plan, prepare_triton(plan), plan.softmax_scale)


def _run(layout, params, shape, dtype, seed, *, training=False):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=g).to(DEVICE, dtype).requires_grad_() for _ in range(3))
    plan = mocbench.get_backend("moc", impl="reference", **params).prepare(
        q.detach(), k.detach(), layout, training=training,
        generator=torch.Generator(device=DEVICE).manual_seed(seed) if training else None)
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = IMPLS["reference"].forward(qd, kd, vd, plan)
    out = _triton(q, k, v, plan)
    assert out.dtype == dtype and out.shape == q.shape
    tol = TOL[dtype]
    assert (out.double() - ref).abs().max().item() <= tol
    go = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).to(DEVICE)
    g_ref = torch.autograd.grad(ref, (qd, kd, vd), go)
    g_out = torch.autograd.grad(out, (q, k, v), go.to(dtype))
    for name, a, b in zip("qkv", g_ref, g_out):
        assert (a - b.double()).abs().max().item() <= 10 * tol, f"d{name}"
    return plan


@here
@pytest.mark.parametrize("i", range(18))
def test_triton_matches_reference_float32(i):
    layout, params = _case(i)
    _run(layout, params, (random.Random(i).choice((1, 2)), 2, layout.num_tokens, (16, 13, 32)[i % 3]),
         torch.float32, 40 + i)


@here
@pytest.mark.parametrize("dtype", DTYPES[1:])
@pytest.mark.parametrize("i", range(0, 18, 3))
def test_triton_matches_reference_half(i, dtype):
    layout, params = _case(i)
    _run(layout, params, (1, 2, layout.num_tokens, 16), dtype, 60 + i)


@here
@pytest.mark.parametrize("i", range(4))
def test_triton_tile_routing_matches_float64_oracle(i):
    """Tile routing (moc-spec §9): the plan's per-tile selection, broadcast to its queries, runs unchanged;
    output and gradients equal the independent oracle (tests/oracle.py) on its own tile routing."""
    import oracle

    layout, params = _case(i + 1)
    params.update(routing="tile", tile=(2, 3, 8, 128)[i], top_k=max(1, params["top_k"]))
    shape = (1, 2, layout.num_tokens, 16)
    g = torch.Generator().manual_seed(70 + i)
    q, k, v = (torch.randn(shape, generator=g).to(DEVICE).requires_grad_() for _ in range(3))
    plan = mocbench.get_backend("moc", impl="reference", **params).prepare(q.detach(), k.detach(), layout)
    mask = oracle.moc_mask(q.detach().cpu().double(), k.detach().cpu().double(), layout, **params).to(DEVICE)
    assert oracle.routing_margin(q.detach().cpu().double(), k.detach().cpu().double(), layout, **params) > 1e-6
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = oracle.attend(qd, kd, vd, mask)
    out = _triton(q, k, v, plan)
    assert (out.double() - ref).abs().max().item() <= TOL[torch.float32]
    go = torch.randn(shape, generator=g, dtype=torch.float64).to(DEVICE)
    for name, a, b in zip("qkv", torch.autograd.grad(ref, (qd, kd, vd), go), torch.autograd.grad(out, (q, k, v), go.float())):
        assert (a - b.double()).abs().max().item() <= 10 * TOL[torch.float32], f"d{name}"


@here
def test_triton_float32_head_dim_128_with_smaller_key_blocks():
    """float32 x head_dim 128 launches with 32-key blocks and one stage (shared-memory budget)."""
    from mocbench.backends.moc.triton_impl import _launch

    assert _launch(torch.float32, 128)["BLOCK_N"] == 32 and _launch(torch.bfloat16, 128)["BLOCK_N"] == 64
    layout = TokenLayout.multi_shot(text_tokens=[3, 2], frames=[3, 2], tokens_per_frame=20)
    _run(layout, dict(top_k=2, chunking="frame", causal=False), (1, 2, layout.num_tokens, 128), torch.float32, 5)


@here
@pytest.mark.parametrize("causal", [True, False])
def test_triton_partly_anchored_fixed_chunks(causal):
    """fixed:7 chunks straddle shot boundaries: their anchored keys are masked per (query, key)."""
    layout = TokenLayout.multi_shot(text_tokens=[3, 2, 4], frames=[2, 2, 2], tokens_per_frame=5)
    params = dict(top_k=3, chunking="fixed:7", local_anchor="shot", causal=causal)
    _run(layout, params, (2, 2, layout.num_tokens, 8), torch.float32, 7)


@here
def test_triton_training_plan_and_groups_larger_than_a_tile():
    """Drop-in/drop-off plans, and > BLOCK_M queries routing to one chunk (several tiles per group)."""
    layout = TokenLayout.single_shot(text_tokens=2, frames=12, tokens_per_frame=12)
    params = dict(top_k=8, chunking="frame", p_drop_off=0.3, p_drop_in=0.5, n_drop_in=2)
    plan = _run(layout, params, (1, 1, layout.num_tokens, 16), torch.float32, 9, training=True)
    assert int(prepare_triton(plan).group_ptr.diff().max()) > BLOCK_M


@here
def test_triton_repeated_chunks_in_a_hand_made_plan_count_once():
    layout = TokenLayout.multi_shot(text_tokens=[2, 2], frames=[3, 3], tokens_per_frame=3)
    g = torch.Generator().manual_seed(21)
    q, k, v = (torch.randn(1, 2, layout.num_tokens, 16, generator=g).to(DEVICE) for _ in range(3))
    plan = mocbench.get_backend("moc", impl="reference", top_k=2, causal=False).prepare(q, k, layout)
    sel = plan.selected.clone()
    sel[..., 1] = sel[..., 0]
    plan.selected = sel
    ref = IMPLS["reference"].forward(q.double(), k.double(), v.double(), plan)
    assert (_triton(q, k, v, plan).double() - ref).abs().max().item() <= 2e-5


@here
@pytest.mark.skipif(not ON_GPU, reason="head_dim 128 bf16 on the backend path needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_triton_backend_on_cuda(dtype, head_dim):
    layout = TokenLayout.multi_shot(text_tokens=[16, 16], frames=[4, 4], tokens_per_frame=64)
    backend = mocbench.get_backend("moc", impl="triton", top_k=2, chunking="frame")
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 4, layout.num_tokens, head_dim, generator=g).to("cuda", dtype) for _ in range(3))
    out = backend(q, k, v, layout)
    plan = backend.prepare(q, k, layout)
    ref = IMPLS["reference"].forward(q.double(), k.double(), v.double(), plan)
    assert (out.double() - ref).abs().max().item() <= backend.tolerance[dtype]
