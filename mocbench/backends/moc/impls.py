"""Implementations of the MoC forward pass behind ``get_backend("moc", impl=...)``.

Every implementation computes the same function (moc-spec §5) from the same routing plan;
they differ only in how attention over the routed keys is executed. ``"auto"`` picks the
first *available* entry of ``AUTO_ORDER[device type]``; when it has to pass over one (e.g. the
fused CPU kernel could not be built) it warns once, naming the reason, and the plan records the
implementation that ran (``plan.impl``, shown in bench rows and backend labels).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mocbench.backends.moc import cpu_ext
from mocbench.backends.moc.flex import flex_forward, flex_workspace_bytes, prepare_flex
from mocbench.backends.moc.fused import fused_forward, fused_workspace_bytes, prepare_fused
from mocbench.backends.moc.gather import gather_forward, gather_workspace_bytes, prepare_gather
from mocbench.backends.moc.reference import reference_forward, reference_workspace_bytes
from mocbench.backends.moc.sizes import MoCSizes
from mocbench.backends.moc.triton_impl import prepare_triton, triton_forward, triton_workspace_bytes
from mocbench.backends.moc.triton_impl import unavailable_reason as triton_unavailable


@dataclass(frozen=True)
class MoCImpl:
    name: str
    forward: Callable
    devices: tuple[str, ...]
    description: str
    # Upper bound of the device bytes its prepare step, forward and backward allocate (no tensors);
    # see MoCBackend.workspace_bytes.
    workspace: Callable[[MoCSizes], int]
    # Optional index building run inside ``prepare`` (so it is timed with routing); its result
    # is stored in ``plan.impl_state``.
    prepare: Callable | None = None
    backward_devices: tuple[str, ...] = ("cpu", "cuda")
    # Optional check run before use: None when usable, else the reason it is not.
    unavailable: Callable[[], str | None] | None = None
    dtypes: tuple[torch.dtype, ...] | None = None  # None: every dtype the backend takes

    def unavailable_reason(self) -> str | None:
        return self.unavailable() if self.unavailable is not None else None


IMPLS: dict[str, MoCImpl] = {
    "reference": MoCImpl("reference", reference_forward, ("cpu", "cuda"),
                         "dense (B,H,L,L) mask + masked softmax; exact, O(L^2) memory",
                         workspace=reference_workspace_bytes),
    "flex": MoCImpl("flex", flex_forward, ("cuda", "cpu"),
                    "FlexAttention with a BlockMask built from the routing (compiled on CUDA; eager, "
                    "unfused and forward-only on CPU: correctness only)", workspace=flex_workspace_bytes,
                    prepare=prepare_flex,
                    backward_devices=("cuda",)),
    "gather": MoCImpl("gather", gather_forward, ("cpu",),
                      "CPU: anchors as stacked blocks + per-(head, chunk) gathered queries on fused flash "
                      "kernels, exact log-sum-exp merge; custom backward", workspace=gather_workspace_bytes,
                      prepare=prepare_gather,
                      backward_devices=("cpu",)),
    "fused": MoCImpl("fused", fused_forward, ("cpu",),
                     "CPU: a C++ kernel (built at first use): anchors and routed chunks in cache-sized tiles on "
                     "BLAS, each row's partials folded in place by online softmax; exact; C++ backward",
                     workspace=fused_workspace_bytes, prepare=prepare_fused, backward_devices=("cpu",),
                     unavailable=cpu_ext.unavailable_reason),
    "triton": MoCImpl("triton", triton_forward, ("cuda",),
                      "CUDA: Triton kernels reading the routing CSR (anchor and routed partials, exact LSE merge, "
                      "atomic backward); float32/float16/bfloat16. Checked in Triton's interpreter on CPU; "
                      "not yet measured on a GPU, so not the CUDA default", workspace=triton_workspace_bytes,
                      prepare=prepare_triton,
                      backward_devices=("cuda",), unavailable=triton_unavailable,
                      dtypes=(torch.float32, torch.float16, torch.bfloat16)),
}
# What impl="auto" runs, per device type: the fastest exact implementation first.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cpu": ("fused", "gather", "reference"),
    "cuda": ("flex", "reference"),
}


_WARNED: set[str] = set()


def resolve_impl(name: str, device_type: str) -> MoCImpl:
    """The implementation ``name`` names, or for ``"auto"`` the first available one for the device."""
    if name == "auto":
        for cand in AUTO_ORDER.get(device_type, ()):
            impl = IMPLS[cand]
            if device_type not in impl.devices:
                continue
            reason = impl.unavailable_reason()
            if reason is None:
                return impl
            if cand not in _WARNED:
                _WARNED.add(cand)
                warnings.warn(f"moc impl='auto' on {device_type}: passing over {cand!r} ({reason})", stacklevel=2)
        raise ValueError(f"no MoC implementation supports device {device_type!r}")
    return IMPLS[name]
