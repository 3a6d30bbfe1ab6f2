"""Build and load the fused CPU MoC kernels (``csrc/*.cpp``) at first use.

The extension is compiled with ``torch.utils.cpp_extension.load`` (ninja + the system C++
compiler, ``-O3 -march=native``) into ``$MOCBENCH_EXT_DIR`` (default ``~/.cache/mocbench/ext``),
under a name that hashes the source, the flags, the torch version and the CPU's feature flags,
so a cache shared between machines or versions never loads code built for another. The first
build takes under a minute; later processes import the built ``.so`` directly, without
torch's build lock. Builds are serialised with an ``flock`` on ``build.flock`` (released by the
kernel if the builder dies), under which torch's own lock file, if a killed builder left one, is
removed: torch's lock alone would leave every later process waiting forever.

``MOCBENCH_FUSED_CPU=0`` turns the extension off (impl ``"fused"`` then reports itself
unavailable with that reason). Any build or load failure is kept and reported the same way:
impl ``"fused"`` refuses to run and names the reason; ``impl="auto"`` warns once and uses the
next exact implementation.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import platform
import sysconfig
import threading
from pathlib import Path
from types import ModuleType

_CSRC = Path(__file__).with_name("csrc")
_SOURCES = [_CSRC / "forward.cpp", _CSRC / "backward.cpp", _CSRC / "module.cpp"]
_HEADERS = [_CSRC / "moc_cpu.h"]
# -fopenmp: at::parallel_for is an inline OpenMP region; without it the kernel runs on one thread.
_CFLAGS = ["-O3", "-march=native", "-std=c++17", "-fopenmp"]
_LDFLAGS = ["-fopenmp"]
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


def _name() -> str:
    import torch

    sources = "\n".join(p.read_text() for p in _SOURCES + _HEADERS)
    key = "\n".join([sources, " ".join(_CFLAGS + _LDFLAGS), torch.__version__, str(sysconfig.get_config_var("EXT_SUFFIX")),
                     _cpu_signature()])
    return "mocbench_moc_cpu_" + hashlib.sha1(key.encode()).hexdigest()[:12]


def _import_built(name: str, so: Path) -> ModuleType:
    import torch  # noqa: F401  (the extension links against libtorch, which must be loaded first)

    spec = importlib.util.spec_from_file_location(name, so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build() -> ModuleType:
    if os.environ.get("MOCBENCH_FUSED_CPU", "1") == "0":
        raise RuntimeError("disabled by MOCBENCH_FUSED_CPU=0")
    missing = [str(p) for p in _SOURCES + _HEADERS if not p.is_file()]
    if missing:
        raise RuntimeError(f"kernel sources missing from this installation: {', '.join(missing)}")
    name = _name()
    so, done = _build_paths()
    build_dir = so.parent
    if done.is_file() and so.is_file():  # built before: import it directly (no build lock, no ninja run)
        try:
            return _import_built(name, so)
        except (ImportError, OSError):
            pass  # damaged since: rebuild below
    try:
        from torch.utils import cpp_extension
    except ImportError as exc:  # pragma: no cover - torch always ships it
        raise RuntimeError(f"torch.utils.cpp_extension unavailable: {exc}") from exc
    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError as exc:
        raise RuntimeError("ninja is not installed (pip install ninja)") from exc
    build_dir.mkdir(parents=True, exist_ok=True)
    with _build_lock(build_dir / "build.flock"):
        if done.is_file() and so.is_file():  # another process built it while we waited
            try:
                return _import_built(name, so)
            except (ImportError, OSError):
                pass
        done.unlink(missing_ok=True)
        so.unlink(missing_ok=True)  # a builder killed mid-link can leave a partial file
        (build_dir / "lock").unlink(missing_ok=True)  # torch's baton, left by a builder that was killed
        try:
            module = cpp_extension.load(name=name, sources=[str(p) for p in _SOURCES], extra_cflags=_CFLAGS,
                                        extra_include_paths=[str(_CSRC)], extra_ldflags=_LDFLAGS,
                                        build_directory=str(build_dir),
                                        verbose=os.environ.get("MOCBENCH_FUSED_CPU_VERBOSE") == "1")
        except Exception as exc:  # compiler missing, headers missing, link errors: all reported, never hidden
            lines = str(exc).strip().splitlines()
            first_error = next((ln.strip() for ln in lines if "error" in ln.lower()), None)
            why = first_error or (lines[-1] if lines else type(exc).__name__)
            raise RuntimeError(f"building the fused CPU kernel failed: {why} (MOCBENCH_FUSED_CPU_VERBOSE=1 shows "
                               "the compiler output)") from exc
        done.write_text(name + "\n")  # written only after a complete build: readers never see a partial .so
        return module


@contextlib.contextmanager
def _build_lock(path: Path):
    try:
        import fcntl
    except ImportError:  # not POSIX: rely on torch's own lock
        yield
        return
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load() -> ModuleType:
    """The compiled module; raises RuntimeError (with the reason) when it cannot be built."""
    with _LOCK:
        if "module" not in _STATE and "error" not in _STATE:
            try:
                _STATE["module"] = _build()
            except Exception as exc:  # noqa: BLE001 -- e.g. OSError from a read-only cache: reported, never raised
                _STATE["error"] = str(exc) if isinstance(exc, RuntimeError) else f"{type(exc).__name__}: {exc}"
        if "error" in _STATE:
            raise RuntimeError(f"fused CPU MoC kernel unavailable: {_STATE['error']}")
        return _STATE["module"]  # type: ignore[return-value]


def _build_paths() -> tuple[Path, Path]:
    name = _name()
    build_dir = Path(os.environ.get("MOCBENCH_EXT_DIR") or Path.home() / ".cache" / "mocbench" / "ext") / name
    return build_dir / f"{name}.so", build_dir / "built.ok"


def is_built() -> bool:
    """Whether a complete build for this source, torch and CPU is in the cache (or loaded)."""
    if "module" in _STATE:
        return True
    so, done = _build_paths()
    return so.is_file() and done.is_file()


def unavailable_reason(*, build: bool = True) -> str | None:
    """None when the extension loads (building it if needed), else why not. With ``build=False``
    nothing is compiled: a kernel that is not built yet but could be counts as available."""
    if not build and "module" not in _STATE and "error" not in _STATE:
        return "disabled by MOCBENCH_FUSED_CPU=0" if os.environ.get("MOCBENCH_FUSED_CPU", "1") == "0" else None
    try:
        load()
    except RuntimeError as exc:
        return str(exc)
    return None


def build_note() -> str | None:
    """A line for listings: the kernel compiles at first use when it is not built yet."""
    return None if is_built() else "not built yet: compiles at first use (about 20 s, once per machine)"
