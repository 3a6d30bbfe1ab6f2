"""Validate a backend before it is timed: its output against the float64 masked-softmax oracle.

Sparse backends do not equal dense attention, so each backend is checked against *its own*
pattern: ``backend.attention_pattern(q, k, layout)`` on a shrunken copy of the cell's layout
(same number of shots and caption placement, few frames and tokens), turned into an exact
float64 masked softmax, or the backend's own ``float64_reference(q, k, v, layout)`` when it defines
one (a function that is not a masked softmax, e.g. VSA's fine + coarse sum). The backend's output in the
cell's dtype and device must agree within ``backend.capabilities.tolerances[dtype]`` (max abs error). For cells that time the
backward pass (``grads=True``), dq, dk, dv for a random output gradient must also agree with the
float64 reference's autograd within ``GRAD_TOL_FACTOR`` times that tolerance (gradients sum more
rounding than outputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from mocbench.backend import AttentionBackend
from mocbench.config import LayoutConfig
from mocbench.layout import TokenLayout

GRAD_TOL_FACTOR = 10.0


@dataclass(frozen=True)
class Validation:
    max_abs_err: float
    tolerance: float
    tokens: int
    grad_max_abs_err: float | None = None  # None: gradients not checked

    @property
    def grad_tolerance(self) -> float:
        return GRAD_TOL_FACTOR * self.tolerance

    @property
    def ok(self) -> bool:
        return self.max_abs_err <= self.tolerance and (
            self.grad_max_abs_err is None or self.grad_max_abs_err <= self.grad_tolerance)

    def message(self, label: str, dtype: str) -> str:
        if self.max_abs_err > self.tolerance:
            return (f"validation failed: {label} differs from the float64 masked reference by "
                    f"{self.max_abs_err:.3g} > tolerance {self.tolerance:.3g} ({dtype}, L={self.tokens})")
        return (f"validation failed: {label}'s gradients differ from the float64 masked reference's by "
                f"{self.grad_max_abs_err:.3g} > tolerance {self.grad_tolerance:.3g} ({dtype}, L={self.tokens})")


def masked_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern_bhll: torch.Tensor,
                     scale: float | None = None) -> torch.Tensor:
    """Exact float64 softmax(q k^T * scale) v restricted to ``pattern`` (every row attends >= 1 key)."""
    q64, k64, v64 = (t.detach().to(torch.float64) for t in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q64 @ k64.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~pattern_bhll.to(scores.device), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v64


def small_layout(geometry: LayoutConfig, *, max_frames: int, max_tokens_per_frame: int,
                 max_text_tokens: int) -> TokenLayout:
    """The cell's layout shrunk for validation; the shot structure is kept, and a frame geometry stays a
    geometry (at most 2 rows, then as many columns as ``max_tokens_per_frame`` allows)."""
    tokens_per_frame, frame_shape = geometry.tokens_per_frame, geometry.frame_shape
    if frame_shape is not None:
        h = min(frame_shape[0], 2, max_tokens_per_frame)
        frame_shape = [h, min(frame_shape[1], max(1, max_tokens_per_frame // h))]
        tokens_per_frame = frame_shape[0] * frame_shape[1]
    return replace(geometry, frames=min(geometry.frames, max_frames),
                   tokens_per_frame=min(tokens_per_frame, max_tokens_per_frame),
                   text_tokens=min(geometry.text_tokens, max_text_tokens), frame_shape=frame_shape).build()


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    err = (a.to(torch.float64) - b.to(torch.float64)).abs().max().item()
    return err if math.isfinite(err) else math.inf


def validate_backend(backend: AttentionBackend, layout: TokenLayout, *, head_dim: int, dtype: torch.dtype,
                     device: torch.device | str, heads: int = 2, seed: int = 0, grads: bool = False) -> Validation:
    """Run ``backend`` on random inputs for ``layout`` and compare with the float64 oracle
    (and, with ``grads``, its dq, dk, dv for a random output gradient)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (1, heads, layout.num_tokens, head_dim)
    q, k, v = (torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
               for _ in range(3))
    with torch.no_grad():
        pattern = backend.attention_pattern(q, k, layout)
    tol = backend.capabilities.tolerances.get(dtype, 0.0)
    own_reference = getattr(backend, "float64_reference", None)
    if not grads:
        with torch.no_grad():
            out = backend(q, k, v, layout)
            ref = own_reference(q, k, v, layout) if own_reference else masked_reference(q, k, v, pattern)
        return Validation(_max_err(out, ref), tol, layout.num_tokens)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    q64, k64, v64 = (t.detach().to(torch.float64).requires_grad_() for t in (q, k, v))
    dout = torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device)
    out = backend(q, k, v, layout)
    grads_out = torch.autograd.grad(out, (q, k, v), dout.to(dtype))
    ref_out = own_reference(q64, k64, v64, layout) if own_reference else _reference_with_grad(q64, k64, v64, pattern)
    grads_ref = torch.autograd.grad(ref_out, (q64, k64, v64), dout)
    grad_err = max(_max_err(a, b) for a, b in zip(grads_out, grads_ref))
    return Validation(_max_err(out.detach(), ref_out.detach()), tol, layout.num_tokens, grad_err)


def _reference_with_grad(q64, k64, v64, pattern_bhll):
    scores = (q64 @ k64.transpose(-1, -2)) / math.sqrt(q64.shape[-1])
    scores = scores.masked_fill(~pattern_bhll.to(scores.device), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v64
