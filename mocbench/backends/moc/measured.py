"""Where each MoC implementation has been measured: device, date and the committed result store.

A hand-kept table (add a row when a result store under ``results/`` gains ok rows of an impl on a new
device); ``tests/test_moc_varlen.py`` checks every row against its store, so the table cannot claim a
measurement the store does not hold. ``mocbench backends`` prints :func:`measured_note` for every impl.
CUDA's ``auto`` order (``impls.AUTO_ORDER``) should be decided from the GPU rows here; there are none yet.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Measurement:
    """An impl timed (after validation) on one device; ``store`` holds its rows (column ``impl``)."""

    impl: str
    device_type: str  # "cpu" or "cuda"
    device: str  # the store's env_cpu / env_gpu
    date: str  # ISO date of the rows (finished_at)
    store: str  # path from the repository root


MEASURED: tuple[Measurement, ...] = (
    Measurement("fused", "cpu", "AMD EPYC", "2026-11-30", "results/cpu_moc_32k/results.csv"),
    Measurement("gather", "cpu", "AMD EPYC", "2026-11-30", "results/cpu_moc_32k/results.csv"),
    Measurement("flex", "cpu", "AMD EPYC", "2026-11-30", "results/cpu_routing_32k/results.csv"),
)


def measured_note(impl: str, devices: tuple[str, ...]) -> str:
    """One line for listings: each measurement of ``impl``, and for an impl that runs on CUDA without a
    GPU measurement, ``not yet measured on a GPU``."""
    rows = [m for m in MEASURED if m.impl == impl]
    parts = [f"{m.device_type}: {m.device}, {m.date}, {m.store}" for m in rows]
    if "cuda" in devices and not any(m.device_type == "cuda" for m in rows):
        parts.append("not yet measured on a GPU")
    return "; ".join(parts) or "not measured"
