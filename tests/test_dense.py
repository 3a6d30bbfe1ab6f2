"""Dense backends: torch SDPA (auto/math/flash on CPU) against SDPA itself and the float64 oracle;
kernels that cannot run on CPU (flash_attn, xformers, flash_attn4, SDPA efficient/cudnn) refuse
with reasons instead of silently running something else. CUDA rows skip without a GPU."""

from __future__ import annotations

import random

import oracle
import pytest
import torch
import torch.nn.functional as F
from conftest import draw_inputs, kind_of, max_err, qkv, random_layout, requires_cuda, seeded_grad_out

import mocbench

LAYOUTS = [pytest.param(random_layout(random.Random(600 + i), kind_of(i)), id=f"{kind_of(i)}-{i}")
           for i in range(6)]
CPU_KERNELS = ["auto", "math", "flash"]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
GRAD_TOL = {torch.float64: 1e-9, torch.float32: 1e-5}
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])



@DTYPES
@pytest.mark.parametrize("kernel", CPU_KERNELS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dense_sdpa_equals_torch_sdpa_and_oracle(layout, kernel, dtype):
    """dense(sdpa_backend=kernel) = F.scaled_dot_product_attention = full float64 softmax attention;
    its pattern is all True and stats/estimate count L^2 pairs per (batch, head)."""
    if kernel == "flash" and dtype == torch.float64:
        # not a skip of the check: only of a kernel/dtype pair the backend itself may refuse
        reasons = mocbench.get_backend("dense", sdpa_backend="flash").not_supported_reasons(
            device="cpu", dtype=dtype, head_dim=16)
        if reasons:
            pytest.skip(f"dense flash refuses float64 on CPU: {reasons}")
    B, H, L, D = 2, 2, layout.num_tokens, 16
    q, k, v = qkv((B, H, L, D), 41, dtype)
    backend = mocbench.get_backend("dense", sdpa_backend=kernel)
    assert backend.not_supported_reasons(q) == []
    out = backend(q, k, v, layout)
    assert out.shape == q.shape and out.dtype == dtype
    assert max_err(out, F.scaled_dot_product_attention(q, k, v)) <= TOL[dtype]
    assert max_err(out, oracle.attend(q, k, v, oracle.dense_mask(layout))) <= TOL[dtype]
    assert bool(backend.attention_pattern(q, k, layout).all())
    st = backend.stats(q, k, layout)
    assert st.pairs == B * H * L * L and st.sparsity == 0.0
    assert backend.estimate(layout, head_dim=D, batch=B, heads=H) == st


@DTYPES
@pytest.mark.parametrize("kernel", CPU_KERNELS)
def test_dense_sdpa_gradients_match_oracle(kernel, dtype):
    """Backward through dense SDPA equals autograd through the oracle's float64 softmax."""
    if kernel == "flash" and dtype == torch.float64 and mocbench.get_backend(
            "dense", sdpa_backend="flash").not_supported_reasons(device="cpu", dtype=dtype, head_dim=8):
        pytest.skip("dense flash refuses float64 on CPU")
    layout = mocbench.TokenLayout.multi_shot(text_tokens=[3, 0, 2], frames=[2, 3, 1], tokens_per_frame=4)
    shape = (2, 2, layout.num_tokens, 8)
    base = qkv(shape, 5, torch.float64)
    g = seeded_grad_out(shape, 5)
    q, k, v = (t.clone().to(dtype).requires_grad_() for t in base)
    (mocbench.get_backend("dense", sdpa_backend=kernel)(q, k, v, layout).double() * g).sum().backward()
    q0, k0, v0 = (t.clone().to(dtype).to(torch.float64).requires_grad_() for t in base)
    (oracle.attend(q0, k0, v0, oracle.dense_mask(layout)) * g).sum().backward()
    for name, got, want in (("q", q.grad, q0.grad), ("k", k.grad, k0.grad), ("v", v.grad, v0.grad)):
        assert max_err(got, want) <= GRAD_TOL[dtype], f"grad {name}"


def test_dense_custom_scale():
    """scale= is passed through to the kernel."""
    layout = mocbench.TokenLayout.single_shot(text_tokens=2, frames=2, tokens_per_frame=3)
    q, k, v = qkv((1, 2, layout.num_tokens, 8), 8, torch.float64)
    out = mocbench.get_backend("dense")(q, k, v, layout, scale=0.37)
    assert max_err(out, oracle.attend(q, k, v, oracle.dense_mask(layout), scale=0.37)) <= 1e-10


REFUSED_ON_CPU = [
    pytest.param("flash_attn", {}, id="flash_attn"),
    pytest.param("xformers", {}, id="xformers"),
    pytest.param("flash_attn4", {}, id="flash_attn4"),
    pytest.param("dense", {"sdpa_backend": "efficient"}, id="dense-efficient"),
    pytest.param("dense", {"sdpa_backend": "cudnn"}, id="dense-cudnn"),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["f16", "f32"])
@pytest.mark.parametrize("name,params", REFUSED_ON_CPU)
def test_cuda_only_dense_kernels_refuse_cpu_with_reasons(name, params, dtype):
    """On CPU tensors these kernels list why they cannot run, and every entry point that would
    run them raises UnsupportedError carrying those reasons (no silent fallback)."""
    layout = mocbench.TokenLayout.single_shot(text_tokens=2, frames=2, tokens_per_frame=4)
    q, k, v = qkv((1, 2, layout.num_tokens, 16), 1, dtype)
    backend = mocbench.get_backend(name, **params)
    reasons = backend.not_supported_reasons(q)
    assert reasons and all(isinstance(r, str) and r for r in reasons)
    assert any("cpu" in r for r in reasons), reasons
    for call in (lambda: backend(q, k, v, layout), lambda: backend.prepare(q, k, layout)):
        with pytest.raises(mocbench.UnsupportedError) as exc:
            call()
        assert exc.value.reasons == reasons
        for r in reasons:
            assert r in str(exc.value)
        assert name in str(exc.value)


# --------------------------------------------------------------------------- CUDA
CUDA_KERNELS = [
    pytest.param("dense", {"sdpa_backend": "auto"}, torch.float32, id="dense-auto-f32"),
    pytest.param("dense", {"sdpa_backend": "math"}, torch.float32, id="dense-math-f32"),
    pytest.param("dense", {"sdpa_backend": "efficient"}, torch.float32, id="dense-efficient-f32"),
    pytest.param("dense", {"sdpa_backend": "flash"}, torch.bfloat16, id="dense-flash-bf16"),
    pytest.param("dense", {"sdpa_backend": "cudnn"}, torch.bfloat16, id="dense-cudnn-bf16"),
    pytest.param("flash_attn", {}, torch.bfloat16, id="flash_attn-bf16"),
    pytest.param("xformers", {}, torch.float16, id="xformers-f16"),
    pytest.param("flash_attn4", {}, torch.bfloat16, id="flash_attn4-bf16"),
]


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("name,params,dtype", CUDA_KERNELS)
def test_dense_kernels_on_cuda_match_oracle(name, params, dtype):
    """On CUDA every dense kernel either runs and matches the float64 oracle within its dtype's
    tolerance, or refuses with reasons (missing package, compute capability)."""
    layout = mocbench.TokenLayout.multi_shot(text_tokens=[8, 8], frames=[2, 2], tokens_per_frame=16)
    q, k, v = (t.to("cuda", dtype) for t in qkv((2, 4, layout.num_tokens, 64), 3, torch.float32))
    backend = mocbench.get_backend(name, **params)
    reasons = backend.not_supported_reasons(q)
    if reasons:
        with pytest.raises(mocbench.UnsupportedError):
            backend(q, k, v, layout)
        pytest.skip(f"{name} refuses this device: {reasons}")
    out = backend(q, k, v, layout)
    ref = oracle.attend(q.cpu(), k.cpu(), v.cpu(), oracle.dense_mask(layout))
    assert out.shape == q.shape and out.dtype == dtype
    assert max_err(out.cpu(), ref) <= backend.tolerance[dtype]


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("name,params", [pytest.param("moc", {"top_k": 2, "chunking": "frame"}, id="moc"),
                                         pytest.param("frame_window", {"window": 1}, id="frame_window"),
                                         pytest.param("strided", {"stride": 2}, id="strided")])
def test_sparse_backends_on_cuda_match_oracle(name, params):
    """Sparse backends on CUDA (float32) equal the float64 oracle within 1e-5."""
    layout = mocbench.TokenLayout.multi_shot(text_tokens=[3, 2], frames=[3, 2], tokens_per_frame=4)
    q, k, v, _ = draw_inputs((2, 2, layout.num_tokens, 16), 12, layout, params if name == "moc" else None)
    mask = oracle.pattern(name, params, q.double(), k.double(), layout)
    out = mocbench.get_backend(name, **params)(q.cuda(), k.cuda(), v.cuda(), layout)
    assert max_err(out.cpu(), oracle.attend(q, k, v, mask)) <= 1e-5
