"""The one contract every MoC implementation follows (in the spirit of xformers' fmha operators).

An implementation (``impl=`` of the ``moc`` backend) computes moc-spec §5 from a routing plan. It
declares, in one place and in the same vocabulary as backends (:class:`mocbench.backend.Capabilities`):
the devices, dtypes and head dims it takes, where it has a backward pass, the Python packages it needs
and its tolerances; where one device takes less than the others (flash kernels on CUDA: half types
only), a ``Capabilities`` for that device in ``device_caps``; plus, where it has one, an availability
check that no declaration can express (the C++ kernel must build). :meth:`MoCImpl.not_supported_reasons`
explains every refusal. ``variant`` names the kernel an implementation runs on a device where more than
one can sit behind the same code (``varlen``: torch's FA2, or FA3/FA4 when activated), so result rows
record it (:meth:`MoCImpl.label`).

Every implementation is entered the same way, through :func:`run_impl`: it checks the tensors against
the plan, reuses the index structures the plan's ``prepare`` built for this implementation (or builds
them when the plan was prepared for another one), resolves the softmax scale, and calls the
implementation's ``kernel(q, k, v, plan, state, scale) -> out``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from mocbench.backend import Capabilities, check_matches_plan
from mocbench.backends.moc.sizes import MoCSizes


@dataclass(frozen=True, kw_only=True)
class MoCImpl:
    """One MoC implementation: what it can run, how it is prepared and entered, what it allocates."""

    name: str
    description: str
    caps: Capabilities
    # kernel(q, k, v, plan, state, scale) -> out (B, H, L, D), on tensors run_impl has checked
    kernel: Callable[..., torch.Tensor]
    # Upper bound of the device bytes its prepare step, forward and backward allocate (no tensors)
    workspace: Callable[[MoCSizes], int]
    # Index building run inside the backend's ``prepare`` (timed with routing); kept in plan.impl_state
    prepare: Callable[[Any], Any] | None = None
    # A check beyond the declaration: None when usable, else why not. ``build=False`` must not
    # compile anything (listing backends never compiles); it may answer None for "builds on first use".
    unavailable: Callable[..., str | None] | None = None
    # What a device takes where it takes less than ``caps`` (its devices stay those of ``caps``)
    device_caps: dict[str, Capabilities] = field(default_factory=dict)
    # variant(device type) -> the kernel behind the implementation there (None: nothing to add)
    variant: Callable[[str], str | None] | None = None

    def caps_for(self, device: torch.device | str | None) -> Capabilities:
        """The declaration that applies on ``device`` (``caps`` unless ``device_caps`` names its type)."""
        return self.caps if device is None else self.device_caps.get(torch.device(device).type, self.caps)

    def label(self, device: torch.device | str) -> str:
        """The name result rows record: ``name``, or ``name(variant)`` when a variant is declared."""
        extra = self.variant(torch.device(device).type) if self.variant is not None else None
        return f"{self.name}({extra})" if extra else self.name

    def not_supported_reasons(self, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                              head_dim: int | None = None, requires_grad: bool = False,
                              build: bool = True) -> list[str]:
        """Every reason this implementation refuses a call (empty: it runs)."""
        reasons = self.caps_for(device).reasons(device=device, dtype=dtype, head_dim=head_dim,
                                                requires_grad=requires_grad)
        if self.unavailable is not None and (why := self.unavailable(build=build)) is not None:
            reasons.append(why)
        return [f"impl {self.name!r}: {r}" for r in reasons]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan) -> torch.Tensor:
        """MoC attention on ``plan`` (any MoC plan; see :func:`run_impl`)."""
        return run_impl(self, q, k, v, plan)


def run_impl(impl: MoCImpl, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan) -> torch.Tensor:
    """The single entry of every implementation: checks, plan state, scale, then ``impl.kernel``."""
    if q.device.type not in impl.caps.devices:
        raise ValueError(f"moc impl {impl.name!r} runs on {', '.join(impl.caps.devices)}, got {q.device}")
    caps = impl.caps_for(q.device)
    if q.dtype not in caps.dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in caps.dtypes)
        raise ValueError(f"moc impl {impl.name!r} takes {names} on {q.device.type}, "
                         f"got {str(q.dtype).removeprefix('torch.')}")
    check_matches_plan(q, k, v, plan)
    if impl.prepare is None:
        state = None
    elif plan.impl == impl.name and plan.impl_state is not None:
        state = plan.impl_state
    else:  # a plan prepared for another implementation (e.g. "reference"): index it here
        state = impl.prepare(plan)
    return impl.kernel(q, k, v, plan, state, plan.softmax_scale)
