"""The MoC implementations behind ``get_backend("moc", impl=...)``, and how ``"auto"`` picks one.

Every implementation follows the contract of :mod:`mocbench.backends.moc.impl` and computes the same
function (moc-spec §5) from the same routing plan; they differ only in how attention over the
routed keys is executed. ``"auto"`` picks the first entry of ``AUTO_ORDER[device type]`` that
supports the call; when it has to pass over one (e.g. the fused CPU kernel could not be built) it
warns once, naming the reason, and the plan records the implementation that ran (``plan.impl``, shown
in bench rows and backend labels). When none fits, the error lists every implementation's reasons.
"""

from __future__ import annotations

import warnings

import torch

from mocbench.backend import FLOAT_DTYPES, Capabilities
from mocbench.backends.moc import cpu_ext
from mocbench.backends.moc.flex import (
    flex_eager_kernel,
    flex_eager_workspace_bytes,
    flex_kernel,
    flex_workspace_bytes,
    prepare_flex,
)
from mocbench.backends.moc.fused import fused_kernel, fused_workspace_bytes, prepare_fused
from mocbench.backends.moc.gather import gather_kernel, gather_workspace_bytes, prepare_gather
from mocbench.backends.moc.impl import MoCImpl
from mocbench.backends.moc.reference import reference_kernel, reference_workspace_bytes
from mocbench.backends.moc.triton_impl import prepare_triton, triton_kernel, triton_workspace_bytes
from mocbench.backends.moc.varlen import prepare_varlen, varlen_kernel, varlen_workspace_bytes
from mocbench.backends.moc.varlen_kernels import flash_variant

IMPLS: dict[str, MoCImpl] = {impl.name: impl for impl in (
    MoCImpl(name="reference", description="dense (B,H,L,L) mask + masked softmax; exact, O(L^2) memory",
            caps=Capabilities(devices=("cpu", "cuda")), kernel=reference_kernel, workspace=reference_workspace_bytes),
    MoCImpl(name="flex", description="compiled FlexAttention with a BlockMask built from the routing: full blocks "
                                     "skip the mask_mod, inactive ones are never read (CUDA: Triton; CPU: "
                                     "inductor's C++ template, forward only; the first call per shape compiles)",
            caps=Capabilities(devices=("cuda", "cpu"), backward_devices=("cuda",)), kernel=flex_kernel,
            prepare=prepare_flex, workspace=flex_workspace_bytes),
    MoCImpl(name="flex_eager", description="the same BlockMask on uncompiled FlexAttention: every score "
                                           "materialised, O(L^2) memory; correctness only (tests, debugging)",
            caps=Capabilities(devices=("cuda", "cpu"), backward_devices=("cuda",)), kernel=flex_eager_kernel,
            prepare=prepare_flex, workspace=flex_eager_workspace_bytes),
    MoCImpl(name="gather", description="CPU: anchors as stacked blocks + per-(head, chunk) gathered queries on fused "
                                       "flash kernels, exact log-sum-exp merge; custom backward",
            caps=Capabilities(devices=("cpu",)), kernel=gather_kernel, prepare=prepare_gather,
            workspace=gather_workspace_bytes),
    MoCImpl(name="fused", description="CPU: a C++ kernel (built at first use): anchors and routed chunks in "
                                      "cache-sized tiles on BLAS, each row's partials folded in place by online "
                                      "softmax; exact; C++ backward",
            caps=Capabilities(devices=("cpu",)), kernel=fused_kernel, prepare=prepare_fused,
            workspace=fused_workspace_bytes, unavailable=cpu_ext.unavailable_reason),
    MoCImpl(name="triton", description="CUDA: Triton kernels reading the routing CSR (anchor and routed partials, "
                                       "exact LSE merge, atomic backward). Checked in Triton's interpreter on CPU; "
                                       "not yet measured on a GPU, so not the CUDA default",
            caps=Capabilities(devices=("cuda",), dtypes=tuple(d for d in FLOAT_DTYPES if d != torch.float64),
                              requires=("triton",)),
            kernel=triton_kernel, prepare=prepare_triton, workspace=triton_workspace_bytes),
    MoCImpl(name="varlen", description="CUDA: torch's own variable-length flash kernels (FA2; FA3/FA4 when "
                                       "activated through torch.nn.attention): anchors and per-(head, chunk) "
                                       "gathered queries as segments, exact LSE merge, flash backward per segment "
                                       "(no atomics on dk/dv). CPU: the same code on a per-segment stand-in "
                                       "kernel, exact but slow (tests, rehearsals)",
            caps=Capabilities(devices=("cuda", "cpu")),
            device_caps={"cuda": Capabilities(devices=("cuda",), dtypes=(torch.bfloat16, torch.float16),
                                              max_head_dim=256, head_dim_multiple=8,
                                              min_compute_capability=(8, 0))},
            kernel=varlen_kernel, prepare=prepare_varlen, workspace=varlen_workspace_bytes, variant=flash_variant),
)}
# What impl="auto" runs, per device type: the fastest exact implementation first. On CUDA nothing has
# been measured yet (see measured.py), so varlen, on torch's own flash kernels, is first as the lowest
# risk; reorder when a GPU has measured the impls.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cpu": ("fused", "gather", "reference"),
    "cuda": ("varlen", "flex", "reference"),
}
# A line for listings about an implementation's state here (e.g. a kernel not compiled yet).
NOTES = {"fused": cpu_ext.build_note}

_WARNED: set[str] = set()


def resolve_impl(name: str, device_type: str, *, dtype: torch.dtype | None = None, head_dim: int | None = None,
                 requires_grad: bool = False) -> MoCImpl:
    """The implementation ``name`` names, or for ``"auto"`` the first in ``AUTO_ORDER[device_type]``
    that supports the call; a ValueError listing every candidate's reasons when none does."""
    if name != "auto":
        if name not in IMPLS:
            raise ValueError(f"moc impl must be 'auto' or one of {sorted(IMPLS)}, got {name!r}")
        return IMPLS[name]
    refused = []
    for cand in AUTO_ORDER.get(device_type, ()):
        reasons = IMPLS[cand].not_supported_reasons(device=device_type, dtype=dtype, head_dim=head_dim,
                                                    requires_grad=requires_grad)
        if not reasons:
            return IMPLS[cand]
        refused += reasons
        key = f"{cand}:{device_type}"
        if key not in _WARNED:
            _WARNED.add(key)
            warnings.warn(f"moc impl='auto' on {device_type}: passing over {cand!r} ({'; '.join(reasons)})",
                          stacklevel=2)
    others = sorted(n for n in IMPLS if n not in AUTO_ORDER.get(device_type, ()))
    raise ValueError(f"no MoC implementation runs this call on {device_type!r}: "
                     + ("; ".join(refused) or f"none is tried automatically there (opt in with impl= one of {others})"))
