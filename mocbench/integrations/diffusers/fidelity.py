"""Per-layer fidelity: a backend's attention output against the model's dense attention on the same inputs.

With ``apply_backend(..., fidelity=True)`` every backend call in a stream self-attention layer is
followed by the model's own dense attention (torch's ``scaled_dot_product_attention``, what the model's
native processor calls) on the *same* q, k, v — after the model's projections, norms and RoPE, and for
padded captions on the same un-padded sample group, which is the model's masked attention on its valid
rows. Per layer, over all its calls and every element (batch, heads, tokens, head dim), in float64::

    rel_l2 = ||o - o_dense||_2 / ||o_dense||_2        cosine = <o, o_dense> / (||o||_2 ||o_dense||_2)

Costs: one dense attention call per layer call, and a second ``(B, H, L, D)`` output while it runs;
so ``mocbench bench-model`` measures fidelity in a separate forward that is never timed. With random
weights this checks exactness (a backend that attends every pair gives ~1e-7 in float32) and how much
a backend's pattern changes each layer's output on real shapes; it says nothing about visual quality.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

_HEADS_PER_STEP = 4  # float64 copies of at most this many heads at a time (production shapes: ~1 GB)


@dataclass(frozen=True)
class Fidelity:
    """One layer's output against dense attention, over all its calls so far."""

    rel_l2: float
    cosine: float
    calls: int

    def as_row(self, layer: str) -> dict:
        return {"layer": layer, "rel_l2": self.rel_l2, "cosine": self.cosine, "calls": self.calls}


class FidelityMeter:
    """Float64 sums of one layer's ``||o - r||^2``, ``||r||^2``, ``||o||^2`` and ``<o, r>`` over its calls."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.calls, self.diff_sq, self.ref_sq, self.out_sq, self.dot = 0, 0.0, 0.0, 0.0, 0.0

    def add(self, out_bhld: torch.Tensor, ref_bhld: torch.Tensor) -> None:
        if out_bhld.shape != ref_bhld.shape:
            raise ValueError(f"fidelity: output {tuple(out_bhld.shape)} and dense reference "
                             f"{tuple(ref_bhld.shape)} differ in shape")
        for h in range(0, out_bhld.shape[1], _HEADS_PER_STEP):
            o = out_bhld[:, h:h + _HEADS_PER_STEP].detach().to(torch.float64)
            r = ref_bhld[:, h:h + _HEADS_PER_STEP].detach().to(torch.float64)
            self.diff_sq += float((o - r).square().sum())
            self.ref_sq += float(r.square().sum())
            self.out_sq += float(o.square().sum())
            self.dot += float((o * r).sum())
        self.calls += 1

    def result(self) -> Fidelity:
        rel = math.sqrt(self.diff_sq / self.ref_sq) if self.ref_sq > 0 else (0.0 if self.diff_sq == 0 else math.inf)
        norms = math.sqrt(self.out_sq * self.ref_sq)
        cosine = self.dot / norms if norms > 0 else (1.0 if self.diff_sq == 0 else 0.0)
        return Fidelity(rel_l2=rel, cosine=cosine, calls=self.calls)


def dense_attention(q_bhld: torch.Tensor, k_bhld: torch.Tensor, v_bhld: torch.Tensor,
                    scale: float | None) -> torch.Tensor:
    """The model's own attention on these inputs: torch SDPA, no mask (padding is already removed)."""
    with torch.no_grad():
        return torch.nn.functional.scaled_dot_product_attention(q_bhld, k_bhld, v_bhld, scale=scale)


def fidelity_columns(per_layer: dict[str, Fidelity]) -> dict:
    """Result-row columns summarising per-layer fidelity: worst and mean rel-L2, lowest cosine, and every
    layer's ``[rel_l2, cosine]`` as JSON (model order)."""
    if not per_layer:
        return {}
    rels = [f.rel_l2 for f in per_layer.values()]
    return {"fidelity_rel_l2_max": max(rels), "fidelity_rel_l2_mean": sum(rels) / len(rels),
            "fidelity_cos_min": min(f.cosine for f in per_layer.values()),
            "fidelity_layers": json.dumps({name: [f.rel_l2, f.cosine] for name, f in per_layer.items()})}
