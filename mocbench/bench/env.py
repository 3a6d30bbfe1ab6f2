"""The environment a measurement was taken in, written into every result row (no hostname)."""

from __future__ import annotations

import functools
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


def environment(device: str = "cpu") -> dict[str, str]:
    """Versions and hardware; ``device`` selects which GPU name is reported."""
    return {**_static_environment(device), "env_threads": str(torch.get_num_threads())}


@functools.cache
def _static_environment(device: str) -> dict[str, str]:
    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(torch.device(device)) if cuda and device.startswith("cuda") else ""
    return {
        "env_torch": torch.__version__,
        "env_cuda": torch.version.cuda or "",
        "env_gpu": gpu,
        "env_cpu": _cpu_model(),
        "env_python": platform.python_version(),
        "env_os": f"{platform.system()} {platform.release()}",
        "env_mocbench": mocbench.__version__,
        "env_git_sha": _git_sha(),
    }
