"""Validate a backend before it is timed: its output against the float64 masked-softmax oracle.

Sparse backends do not equal dense attention, so each backend is checked against *its own*
pattern: ``backend.attention_pattern(q, k, layout)`` on a shrunken copy of the cell's layout
(same number of shots and caption placement, few frames and tokens), turned into an exact
float64 masked softmax. The backend's output in the cell's dtype and device must agree
within ``backend.capabilities.tolerances[dtype]`` (max abs error). The check is forward-only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mocbench.backend import AttentionBackend
from mocbench.config import LayoutConfig
from mocbench.layout import TokenLayout


@dataclass(frozen=True)
class Validation:
    max_abs_err: float
    tolerance: float
    tokens: int

    @property
    def ok(self) -> bool:
        return self.max_abs_err <= self.tolerance

    def message(self, label: str, dtype: str) -> str:
        return (f"validation failed: {label} differs from the float64 masked reference by "
                f"{self.max_abs_err:.3g} > tolerance {self.tolerance:.3g} ({dtype}, L={self.tokens})")


def masked_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern_bhll: torch.Tensor,
                     scale: float | None = None) -> torch.Tensor:
    """Exact float64 softmax(q k^T * scale) v restricted to ``pattern`` (every row attends >= 1 key)."""
    q64, k64, v64 = (t.detach().to(torch.float64) for t in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q64 @ k64.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~pattern_bhll.to(scores.device), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v64


def small_layout(shots: int, frames: int, tokens_per_frame: int, text_tokens: int, text_placement: str, *,
                 max_frames: int, max_tokens_per_frame: int, max_text_tokens: int) -> TokenLayout:
    """The cell's layout shrunk for validation; the shot structure is kept."""
    return LayoutConfig(shots=shots, frames=min(frames, max_frames),
                        tokens_per_frame=min(tokens_per_frame, max_tokens_per_frame),
                        text_tokens=min(text_tokens, max_text_tokens), text_placement=text_placement).build()


def validate_backend(backend: AttentionBackend, layout: TokenLayout, *, head_dim: int, dtype: torch.dtype,
                     device: torch.device | str, heads: int = 2, seed: int = 0) -> Validation:
    """Run ``backend`` on random inputs for ``layout`` and compare with the float64 oracle."""
    gen = torch.Generator().manual_seed(seed)
    shape = (1, heads, layout.num_tokens, head_dim)
    q, k, v = (torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
               for _ in range(3))
    with torch.no_grad():
        out = backend(q, k, v, layout)
        pattern = backend.attention_pattern(q, k, layout)
    ref = masked_reference(q, k, v, pattern)
    err = (out.to(torch.float64) - ref).abs().max().item()
    if not math.isfinite(err):
        err = math.inf
    return Validation(err, backend.capabilities.tolerances.get(dtype, 0.0), layout.num_tokens)
