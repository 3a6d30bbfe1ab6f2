"""Implementations of the MoC forward pass behind ``get_backend("moc", impl=...)``.

Every implementation computes the same function (moc-spec §5) from the same routing plan;
they differ only in how attention over the routed keys is executed. ``"auto"`` picks the
first entry of ``AUTO_ORDER[device type]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from mocbench.backends.moc.flex import flex_forward, prepare_flex
from mocbench.backends.moc.gather import gather_forward, prepare_gather
from mocbench.backends.moc.reference import reference_forward


@dataclass(frozen=True)
class MoCImpl:
    name: str
    forward: Callable
    devices: tuple[str, ...]
    description: str
    # Optional index building run inside ``prepare`` (so it is timed with routing); its result
    # is stored in ``plan.impl_state``.
    prepare: Callable | None = None
    backward_devices: tuple[str, ...] = ("cpu", "cuda")


IMPLS: dict[str, MoCImpl] = {
    "reference": MoCImpl("reference", reference_forward, ("cpu", "cuda"),
                         "dense (B,H,L,L) mask + masked softmax; exact, O(L^2) memory"),
    "flex": MoCImpl("flex", flex_forward, ("cuda", "cpu"),
                    "FlexAttention with a BlockMask built from the routing (compiled on CUDA; eager, "
                    "unfused and forward-only on CPU: correctness only)", prepare=prepare_flex,
                    backward_devices=("cuda",)),
    "gather": MoCImpl("gather", gather_forward, ("cpu",),
                      "CPU: anchors as stacked blocks + per-(head, chunk) gathered queries on fused flash "
                      "kernels, exact log-sum-exp merge; custom backward", prepare=prepare_gather,
                      backward_devices=("cpu",)),
}
# What impl="auto" runs, per device type: the fastest exact implementation first.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cpu": ("gather", "reference"),
    "cuda": ("flex", "reference"),
}


def resolve_impl(name: str, device_type: str) -> MoCImpl:
    if name == "auto":
        for cand in AUTO_ORDER.get(device_type, ()):
            if device_type in IMPLS[cand].devices:
                return IMPLS[cand]
        raise ValueError(f"no MoC implementation supports device {device_type!r}")
    return IMPLS[name]
