"""The implementations of the peer video families (param ``impl`` of ``sliding_tile``, ``radial``, ``svg``, ``vsa``,
``vmoba``), declared in the backends' vocabulary (:class:`mocbench.backend.Capabilities`), as MoC's are.

* ``gather``: gathered groups on stacked SDPA calls (:mod:`mocbench.backends.grouped`); CPU, forward and
  backward; what the CPU benchmarks time.
* ``flex``: compiled FlexAttention with a BlockMask built from the pattern's block structure
  (:mod:`mocbench.backends.flex_blocks`) on every device: CUDA (Triton; forward and backward) and CPU
  (inductor's C++ template, forward only; the first call per shape compiles), as MoC's impl ``flex``.
* ``flex_eager``: the same BlockMask on uncompiled FlexAttention (every score materialised, the tiles emulated
  by the mask_mod; forward only on CPU): correctness checks, not timing.

``auto`` runs ``AUTO[device type]``: ``gather`` on CPU, ``flex`` on CUDA. A call the selected implementation
cannot run is refused with its reasons (never served by the other one). Where each has been measured is
:data:`MEASURED` (printed by ``mocbench backends``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from mocbench.backend import Capabilities
from mocbench.backends.grouped import CPU_ONLY

FLEX_CAPS = Capabilities(devices=("cuda", "cpu"), backward_devices=("cuda",))
# Every device some implementation runs on: the backends' class declaration; the impl's own caps refine it.
ANY_IMPL = Capabilities(devices=("cpu", "cuda"))


@dataclass(frozen=True)
class PeerImpl:
    name: str
    caps: Capabilities
    description: str
    flex: bool = False  # runs on a FlexAttention BlockMask (flex_blocks)
    compiled: bool = False  # through torch.compile (flex) rather than eagerly (flex_eager)


IMPLS: dict[str, PeerImpl] = {impl.name: impl for impl in (
    PeerImpl("gather", CPU_ONLY, "CPU: gathered groups of queries and keys on stacked SDPA calls (or partials "
                                 "merged by log-sum-exp); exact, autograd backward, memory follows the pairs"),
    PeerImpl("flex", FLEX_CAPS, "compiled FlexAttention with a BlockMask built from the pattern's tiles (full tiles "
                                "skip mask_mod; tile-aligned families run in their kernel order); CUDA: Triton; "
                                "CPU: inductor's C++ template, forward only; the first call per shape compiles",
             flex=True, compiled=True),
    PeerImpl("flex_eager", FLEX_CAPS, "the same BlockMask on uncompiled FlexAttention: every score materialised, "
                                      "tiles emulated by the mask_mod; correctness only (tests, debugging)",
             flex=True),
)}
AUTO: dict[str, str] = {"cpu": "gather", "cuda": "flex"}


@dataclass(frozen=True)
class PeerMeasurement:
    """A family's impl timed (after validation) on one device; ``store`` holds its rows (columns backend, impl)."""

    backend: str
    impl: str
    device_type: str  # "cpu" or "cuda"
    device: str  # the store's env_cpu / env_gpu
    date: str  # ISO date of the rows
    store: str  # path from the repository root


# Add a row when a committed store under results/ gains ok rows of a family's impl on a new device (no GPU has
# run the flex path yet); tests/test_peer_flex.py checks every row against its store.
MEASURED: tuple[PeerMeasurement, ...] = tuple(
    PeerMeasurement(family, "gather", "cpu", "AMD EPYC", "2026-11-30", "results/cpu_families/results.csv")
    for family in ("sliding_tile", "radial", "svg", "vsa", "vmoba"))


def check_impl(impl: object) -> None:
    """Params validation: ``impl`` is 'auto' or a known implementation."""
    if impl != "auto" and impl not in IMPLS:
        raise ValueError(f"impl must be 'auto' or one of {sorted(IMPLS)}, got {impl!r}")


def resolve(impl: str, device: torch.device | str) -> PeerImpl:
    """The implementation ``impl`` names on ``device`` (``auto``: ``AUTO``); ValueError where none applies."""
    if impl != "auto":
        return IMPLS[impl]
    dev = torch.device(device).type
    if dev not in AUTO:
        raise ValueError(f"impl='auto' has no implementation for device {dev!r} (auto runs on {sorted(AUTO)})")
    return IMPLS[AUTO[dev]]


def measured_note(backend: str, impl: str, devices: tuple[str, ...]) -> str:
    """One line for ``mocbench backends``: each measurement of ``backend``'s ``impl``; ``not yet measured on a
    GPU`` for an impl that runs on CUDA without one."""
    rows = [m for m in MEASURED if (m.backend, m.impl) == (backend, impl)]
    parts = [f"{m.device_type}: {m.device}, {m.date}, {m.store}" for m in rows]
    if "cuda" in devices and not any(m.device_type == "cuda" for m in rows):
        parts.append("not yet measured on a GPU")
    return "; ".join(parts) or "not measured"


class PeerImplMixin:
    """For peer backends whose params carry ``impl``: reasons, the name in result rows, the listing."""

    def selected_impl(self, device: torch.device | str) -> PeerImpl:
        return resolve(self.params.impl, device)

    @property
    def pattern_params(self):
        """The params that define the pattern (``impl`` set aside): the key of what the impls share per layout."""
        if any(f.name == "impl" for f in dataclasses.fields(self.params)):
            return dataclasses.replace(self.params, impl="auto")
        return self.params

    def _more_reasons(self, *, device, dtype, head_dim, requires_grad, layout) -> list[str]:
        reasons = super()._more_reasons(device=device, dtype=dtype, head_dim=head_dim, requires_grad=requires_grad,
                                        layout=layout)
        if device is None:
            return reasons
        try:
            impl = self.selected_impl(device)
        except ValueError as exc:
            return [str(exc), *reasons]
        own = impl.caps.reasons(device=device, dtype=dtype, head_dim=head_dim, requires_grad=requires_grad)
        return [f"impl {impl.name!r}: {r}" for r in own] + reasons

    def implementation(self, device) -> str:
        try:
            return self.selected_impl(device).name
        except ValueError:
            return "auto (none for this device)"

    @classmethod
    def implementations(cls, devices: list[str]) -> list[dict]:
        rows = []
        for name, impl in IMPLS.items():
            usable = [dev for dev in devices if dev in impl.caps.devices]
            reasons = impl.caps.reasons(device=usable[0], dtype=None, head_dim=None) if usable else \
                [f"needs {' or '.join(impl.caps.devices)}"]
            order = [dev for dev, n in AUTO.items() if n == name]
            rows.append({"impl": name, "devices": ",".join(impl.caps.devices),
                         "auto_order": ", ".join(f"{d} #1" for d in order) or "opt-in", "available": not reasons,
                         "reasons": reasons, "note": None, "measured": measured_note(cls.name, name, impl.caps.devices),
                         "description": impl.description})
        return rows
