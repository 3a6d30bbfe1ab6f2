"""The environment a measurement was taken in, written into every result row (no hostname).

Four of its fields decide whether a stored row is comparable with what this process would measure
(:data:`COMPARABLE`): the code fingerprint (a hash of mocbench's own source files, so a docs commit
does not invalidate results while any code change does), the device model, torch's version and the
number of CPU threads. The git SHA is recorded too, for people, but not compared.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
from pathlib import Path

import torch

import mocbench


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_sha() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


# The row fields that must match for a stored row to be reused instead of re-measured.
COMPARABLE = ("env_code", "env_device", "env_torch", "env_threads")
_SOURCE_SUFFIXES = (".py", ".cpp", ".h", ".cu")


@functools.cache
def code_fingerprint() -> str:
    """sha256 (first 16 hex digits) of every mocbench source file, by relative path and content."""
    package = Path(mocbench.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.suffix in _SOURCE_SUFFIXES and p.is_file()):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def environment(device: str = "cpu") -> dict[str, str]:
    """Versions and hardware; ``device`` selects which GPU name is reported."""
    return {**_static_environment(device), "env_threads": str(torch.get_num_threads())}


def local_environment() -> dict[str, str]:
    """:func:`environment` of this process's default device (CUDA when available); a failing CUDA query
    records the host only."""
    try:
        return environment("cuda" if torch.cuda.is_available() else "cpu")
    except (RuntimeError, AssertionError):
        return environment("cpu")


def comparable_environment(device: str = "cpu") -> dict[str, str]:
    """The :data:`COMPARABLE` fields of this process for ``device``."""
    env = environment(device)
    return {k: env[k] for k in COMPARABLE}


def environment_difference(row: dict, current: dict[str, str]) -> dict[str, tuple[str, str]]:
    """``{field: (stored, current)}`` for every comparable field where ``row`` differs (missing counts)."""
    return {k: (row.get(k, "") or "(none)", v) for k, v in current.items() if row.get(k, "") != v}


@functools.cache
def _static_environment(device: str) -> dict[str, str]:
    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(torch.device(device)) if cuda and device.startswith("cuda") else ""
    cpu = _cpu_model()
    return {
        "env_code": code_fingerprint(),
        "env_device": gpu or cpu,
        "env_torch": torch.__version__,
        "env_cuda": torch.version.cuda or "",
        "env_gpu": gpu,
        "env_cpu": cpu,
        "env_python": platform.python_version(),
        "env_os": f"{platform.system()} {platform.release()}",
        "env_mocbench": mocbench.__version__,
        "env_git_sha": _git_sha(),
    }
