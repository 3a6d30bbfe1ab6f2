"""Implementations of the MoC forward pass behind ``get_backend("moc", impl=...)``.

Every implementation computes the same function (moc-spec §5) from the same routing plan;
they differ only in how attention over the routed keys is executed. ``"auto"`` picks the
first entry of ``AUTO_ORDER`` that supports the tensors' device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from mocbench.backends.moc.reference import reference_forward


@dataclass(frozen=True)
class MoCImpl:
    name: str
    forward: Callable
    devices: tuple[str, ...]
    description: str


IMPLS: dict[str, MoCImpl] = {
    "reference": MoCImpl("reference", reference_forward, ("cpu", "cuda"),
                         "dense (B,H,L,L) mask + masked softmax; exact, O(L^2) memory"),
}
AUTO_ORDER: tuple[str, ...] = ("reference",)


def resolve_impl(name: str, device_type: str) -> MoCImpl:
    if name == "auto":
        for cand in AUTO_ORDER:
            if device_type in IMPLS[cand].devices:
                return IMPLS[cand]
        raise ValueError(f"no MoC implementation supports device {device_type!r}")
    return IMPLS[name]
