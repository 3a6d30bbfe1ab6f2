"""Dense attention backends: torch SDPA (each kernel pinnable), flash-attn 2, xformers, flash-attn 4.

All compute full softmax attention over every key; they are the baselines of every table.
Optional packages are imported lazily, only when a call needs them; a missing or broken
package shows up in ``not_supported_reasons`` (and as a skipped row in benchmarks), never as
a silent switch to another kernel. Wrapped kernels that take ``(B, L, H, D)`` tensors are
fed transposed views and their output transposed back.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from mocbench.backend import AttentionBackend, Capabilities, Plan
from mocbench.registry import NoParams, register_backend
from mocbench.stats import AttentionStats
from mocbench.workspace import layout_bytes, sdpa_bytes

HALF = (torch.float16, torch.bfloat16)


class DenseBackend(AttentionBackend):
    """Base for dense backends: full pattern, L^2 pairs; subclasses implement `forward`."""

    def _pattern(self, plan: Plan) -> torch.Tensor:
        L = plan.layout.num_tokens
        return torch.ones(plan.batch, plan.heads, L, L, dtype=torch.bool, device=plan.device)

    def plan_stats(self, plan: Plan) -> AttentionStats:
        L = plan.layout.num_tokens
        return AttentionStats(plan.batch, plan.heads, L, plan.head_dim, plan.batch * plan.heads * L * L)

    def estimate(self, layout, *, head_dim, batch=1, heads=1) -> AttentionStats:
        L = layout.num_tokens
        return AttentionStats(batch, heads, L, head_dim, batch * heads * L * L)

    def plan_block_density(self, plan: Plan, block_shape) -> float:
        return 1.0  # every block holds attended pairs

    def estimate_block_density(self, layout, block_shape) -> float:
        return 1.0


@dataclass(frozen=True, kw_only=True)
class SDPAParams:
    """``sdpa_backend``: ``auto`` lets torch choose; the others pin one kernel (refused where it cannot run)."""

    sdpa_backend: Literal["auto", "math", "flash", "efficient", "cudnn"] = "auto"


_SDPA_KERNELS = {
    "math": "MATH",
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
}
_SDPA_CAPS = {
    "auto": Capabilities(),
    "math": Capabilities(),
    # torch ships a CPU flash kernel as well as the CUDA one (sm80+, fp16/bf16, head_dim <= 256).
    "flash": Capabilities(max_head_dim=256),
    "efficient": Capabilities(devices=("cuda",), dtypes=(torch.float16, torch.bfloat16, torch.float32)),
    "cudnn": Capabilities(devices=("cuda",), dtypes=HALF, min_compute_capability=(8, 0), max_head_dim=256),
}


@register_backend("dense", family="dense", params=SDPAParams)
class DenseSDPA(DenseBackend):
    """Dense attention through torch.nn.functional.scaled_dot_product_attention."""

    @property
    def capabilities(self) -> Capabilities:
        return _SDPA_CAPS[self.params.sdpa_backend]

    def _more_reasons(self, *, device, dtype, head_dim, requires_grad, layout) -> list[str]:
        reasons = []
        dev = torch.device(device) if device is not None else None
        if self.params.sdpa_backend == "flash" and dev is not None and dev.type == "cuda":
            if dtype is not None and dtype not in HALF:
                reasons.append(f"SDPA flash on CUDA needs float16/bfloat16, got {str(dtype).removeprefix('torch.')}")
            if torch.cuda.is_available() and torch.cuda.get_device_capability(dev) < (8, 0):
                reasons.append("SDPA flash on CUDA needs compute capability >= 8.0")
        return reasons

    def workspace_bytes(self, layout, *, batch, heads, head_dim, dtype, device="cpu", requires_grad=False) -> int:
        L = layout.num_tokens
        return sdpa_bytes(batch, heads, L, head_dim, dtype, device, requires_grad=requires_grad,
                          sdpa_backend=self.params.sdpa_backend) + layout_bytes(L)

    def forward(self, q, k, v, plan: Plan) -> torch.Tensor:
        kind = self.params.sdpa_backend
        if kind == "auto":
            return F.scaled_dot_product_attention(q, k, v, scale=plan.scale)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([getattr(SDPBackend, _SDPA_KERNELS[kind])]):
            return F.scaled_dot_product_attention(q, k, v, scale=plan.scale)


def _blhd(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2)


@register_backend("flash_attn", family="dense", params=NoParams, caps=Capabilities(
    devices=("cuda",), dtypes=HALF, max_head_dim=256, head_dim_multiple=8,
    min_compute_capability=(8, 0), requires=("flash_attn",)))
class FlashAttn2(DenseBackend):
    """Dense attention through flash-attn 2 (``flash_attn.flash_attn_func``)."""

    def forward(self, q, k, v, plan: Plan) -> torch.Tensor:
        fa = importlib.import_module("flash_attn")
        out = fa.flash_attn_func(_blhd(q), _blhd(k), _blhd(v), softmax_scale=plan.scale)
        return _blhd(out)


@register_backend("xformers", family="dense", params=NoParams, caps=Capabilities(
    devices=("cuda",), dtypes=(torch.float16, torch.bfloat16, torch.float32), requires=("xformers.ops",)))
class XFormers(DenseBackend):
    """Dense attention through xformers' ``memory_efficient_attention``."""

    def forward(self, q, k, v, plan: Plan) -> torch.Tensor:
        xops = importlib.import_module("xformers.ops")
        out = xops.memory_efficient_attention(_blhd(q), _blhd(k), _blhd(v), scale=plan.scale)
        return _blhd(out)


@register_backend("flash_attn4", family="dense", params=NoParams, caps=Capabilities(
    devices=("cuda",), dtypes=HALF, max_head_dim=256, head_dim_multiple=8,
    min_compute_capability=(9, 0), requires=("flash_attn.cute",)))
class FlashAttn4(DenseBackend):
    """Dense attention through flash-attn 4 (CuTeDSL, Hopper/Blackwell: ``flash_attn.cute``)."""

    def forward(self, q, k, v, plan: Plan) -> torch.Tensor:
        fa4 = importlib.import_module("flash_attn.cute")
        out = fa4.flash_attn_func(_blhd(q), _blhd(k), _blhd(v), softmax_scale=plan.scale)
        if isinstance(out, tuple):  # some releases return (out, lse)
            out = out[0]
        return _blhd(out)
