"""Working-set bytes of attention kernels, from sizes alone (no tensors): the pieces backends add up
in ``AttentionBackend.workspace_bytes`` so that ``mocbench bench`` can check a cell's memory first.

Every figure is an upper bound of what one ``prepare`` + ``forward`` (+ ``backward``) allocates on
the tensors' device beyond q, k, v, the output, ``grad_out`` and the gradients (those are added by
:mod:`mocbench.bench.memory`). It is read off the code that runs, term by term, and checked
against measured peaks on CPU (tests/test_bench_memory.py); the CUDA kernels' figures follow the
same reading but have not been measured on a GPU yet.

Legend: B batch, H heads, L tokens, D head_dim, N = B*H*L rows, e bytes per element of the
dtype, f = max(e, 4) bytes of the float32-or-wider compute type.
"""

from __future__ import annotations

import torch

# Per-thread tiles of fused kernels (CPU flash: q/kv blocks of up to 256 x 512 scores; the C++ MoC
# kernels: ~1 MB tiles) and allocator rounding: a fixed allowance rather than a guess per kernel.
KERNEL_SCRATCH_BYTES = 64 << 20
# The layout's per-token tables (modality, shot, frame, segment, patch ids while being concatenated; row
# and column ids with a frame geometry; chunk ids, chunk-sorted order): at most 15 int64 per token.
LAYOUT_BYTES_PER_TOKEN = 15 * 8
HALF = (torch.float16, torch.bfloat16)


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def compute_itemsize(dtype: torch.dtype) -> int:
    """Bytes per element of the type kernels accumulate in: float32 for half types, else the dtype."""
    return max(itemsize(dtype), 4)


def layout_bytes(num_tokens: int) -> int:
    """The layout's per-token tables (CPU; built on first use and cached on the layout)."""
    return LAYOUT_BYTES_PER_TOKEN * num_tokens


def fused_attention_bytes(batch: int, heads: int, tokens: int, head_dim: int, dtype: torch.dtype, *,
                          requires_grad: bool) -> int:
    """A fused (flash-style) kernel: the log-sum-exp and tiles forward; backward adds float32
    accumulators for dq, dk, dv, one for the output gradient and the row sums ``delta``."""
    n = batch * heads * tokens
    total = n * 4 + KERNEL_SCRATCH_BYTES
    if requires_grad:
        total += 4 * n * head_dim * 4 + n * 4
    return total


def math_attention_bytes(batch: int, heads: int, tokens: int, head_dim: int, dtype: torch.dtype, *,
                         requires_grad: bool) -> int:
    """torch's math SDPA: the (B, H, L, L) scores in the compute type, their softmax and the "safe
    softmax" fix-up (3 score tensors and a bool one alive at the forward peak; backward keeps the
    probabilities and adds the probability gradient, the softmax gradient and a temporary: 4),
    plus scaled copies of q and k, and float32 copies of q, k, v, out for half types."""
    f = compute_itemsize(dtype)
    scores = batch * heads * tokens * tokens
    rows = batch * heads * tokens * head_dim
    total = scores * (4 * f if requires_grad else 3 * f + 1) + 2 * rows * f
    if dtype in HALF:
        total += 4 * rows * 4
    if requires_grad:
        total += 4 * rows * f
    return total


def sdpa_kernel(sdpa_backend: str, device: str, dtype: torch.dtype, head_dim: int) -> str:
    """Which kind of kernel ``F.scaled_dot_product_attention`` runs, as far as memory goes:
    ``"math"`` (materialises the scores) or ``"fused"``. ``auto`` follows torch's dispatch as read
    from its code: the CPU flash kernel takes every float dtype, masks included; on CUDA the flash,
    memory-efficient and cuDNN kernels take float16/bfloat16/float32 with head_dim <= 256 and a
    multiple of 8; everything else (float64, odd head dims) falls back to math."""
    if sdpa_backend == "math":
        return "math"
    if sdpa_backend != "auto" or torch.device(device).type == "cpu":
        return "fused"
    fused = dtype in (*HALF, torch.float32) and head_dim <= 256 and head_dim % 8 == 0
    return "fused" if fused else "math"


def sdpa_bytes(batch: int, heads: int, tokens: int, head_dim: int, dtype: torch.dtype, device: str, *,
               requires_grad: bool, sdpa_backend: str = "auto", mask_elements: int = 0) -> int:
    """One SDPA call. A boolean mask of ``mask_elements`` (the caller holds it) is turned into a float
    mask of the same shape in the dtype plus a boolean temporary; on CUDA the memory-efficient
    kernel also pads a (B, H, L, L) copy of it to a multiple of 16 keys."""
    kernel = sdpa_kernel(sdpa_backend, device, dtype, head_dim)
    if kernel == "math":
        total = math_attention_bytes(batch, heads, tokens, head_dim, dtype, requires_grad=requires_grad)
    else:
        total = fused_attention_bytes(batch, heads, tokens, head_dim, dtype, requires_grad=requires_grad)
    if mask_elements:
        total += mask_elements * (1 + itemsize(dtype))
        if torch.device(device).type == "cuda":
            total += batch * heads * tokens * (-(-tokens // 16) * 16) * itemsize(dtype)
    return total
