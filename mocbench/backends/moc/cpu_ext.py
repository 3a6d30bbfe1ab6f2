"""Build and load the fused CPU MoC kernels (``csrc/moc_cpu.cpp``) at first use.

The extension is compiled with ``torch.utils.cpp_extension.load`` (ninja + the system C++
compiler, ``-O3 -march=native``) into torch's extension cache, under a name that includes a
hash of the CPU's feature flags, so a cache shared between different machines never loads code
built for another instruction set. The first build takes about a minute; later imports reuse it.

``MOCBENCH_FUSED_CPU=0`` turns the extension off (impl ``"fused"`` then reports itself
unavailable with that reason). Any build or load failure is kept and reported the same way:
impl ``"fused"`` refuses to run and names the reason; ``impl="auto"`` warns once and uses the
next exact implementation.
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
from pathlib import Path
from types import ModuleType

_SOURCE = Path(__file__).with_name("csrc") / "moc_cpu.cpp"
_LOCK = threading.Lock()
_STATE: dict[str, object] = {}


def _cpu_signature() -> str:
    flags = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags += line.split(":", 1)[1]
                break
    except OSError:
        pass
    return hashlib.sha1(flags.encode()).hexdigest()[:10]


def _build() -> ModuleType:
    if os.environ.get("MOCBENCH_FUSED_CPU", "1") == "0":
        raise RuntimeError("disabled by MOCBENCH_FUSED_CPU=0")
    if not _SOURCE.is_file():
        raise RuntimeError(f"kernel source {_SOURCE} is missing from this installation")
    try:
        from torch.utils import cpp_extension
    except ImportError as exc:  # pragma: no cover - torch always ships it
        raise RuntimeError(f"torch.utils.cpp_extension unavailable: {exc}") from exc
    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError as exc:
        raise RuntimeError("ninja is not installed (pip install ninja)") from exc
    # -fopenmp: at::parallel_for is an inline OpenMP region; without it the kernel runs on one thread.
    flags = ["-O3", "-march=native", "-std=c++17", "-fopenmp"]
    try:
        return cpp_extension.load(name=f"mocbench_moc_cpu_{_cpu_signature()}", sources=[str(_SOURCE)],
                                  extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=os.environ.get("MOCBENCH_FUSED_CPU_VERBOSE") == "1")
    except Exception as exc:  # compiler missing, headers missing, link errors: all reported, never hidden
        msg = str(exc).strip().splitlines()
        raise RuntimeError(f"building the fused CPU kernel failed: {msg[-1] if msg else type(exc).__name__}") from exc


def load() -> ModuleType:
    """The compiled module; raises RuntimeError (with the reason) when it cannot be built."""
    with _LOCK:
        if "module" not in _STATE and "error" not in _STATE:
            try:
                _STATE["module"] = _build()
            except RuntimeError as exc:
                _STATE["error"] = str(exc)
        if "error" in _STATE:
            raise RuntimeError(f"fused CPU MoC kernel unavailable: {_STATE['error']}")
        return _STATE["module"]  # type: ignore[return-value]


def unavailable_reason() -> str | None:
    """None when the extension loads (building it if needed), else why not."""
    try:
        load()
    except RuntimeError as exc:
        return str(exc)
    return None
