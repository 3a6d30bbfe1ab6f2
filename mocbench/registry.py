"""The backend registry: names (plain strings, open to other packages) -> backend classes.

Built-in backends register with ``@register_backend`` when ``mocbench.backends`` is imported.
Other packages add backends through the entry-point group ``mocbench.backends``::

    [project.entry-points."mocbench.backends"]
    my_sparse = "my_pkg.attention"          # a module that calls @register_backend("my_sparse", ...)

Entry points are discovered on first use and imported only when their name is asked for
(or when a full listing with availability is requested).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from mocbench.backend import AttentionBackend, Capabilities
from mocbench.params import build_params

ENTRY_POINT_GROUP = "mocbench.backends"


@dataclass(frozen=True)
class NoParams:
    """For backends without parameters."""


@dataclass(frozen=True)
class BackendSpec:
    name: str
    cls: type[AttentionBackend]
    family: str
    params: type
    description: str
    source: str  # "builtin" or "entry point <dist>"

    def param_fields(self) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(self.params) if f.init]


_REGISTRY: dict[str, BackendSpec] = {}
_PENDING: dict[str, importlib.metadata.EntryPoint] | None = None
_loading_source: str = "builtin"


def register_backend(
    name: str, *, family: str, params: type = NoParams, caps: Capabilities | None = None, description: str = ""
) -> Callable[[type[AttentionBackend]], type[AttentionBackend]]:
    """Class decorator: register an :class:`AttentionBackend` subclass under ``name``.

    ``params`` is a dataclass of the backend's parameters (validated by :func:`get_backend`);
    ``caps`` declares devices, dtypes, head dims, backward, compute capability, dependencies.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"backend name must be a Python identifier-like string, got {name!r}")
    if not dataclasses.is_dataclass(params):
        raise TypeError(f"params for backend {name!r} must be a dataclass, got {params!r}")

    def decorate(cls: type[AttentionBackend]) -> type[AttentionBackend]:
        if not (isinstance(cls, type) and issubclass(cls, AttentionBackend)):
            raise TypeError(f"@register_backend({name!r}) decorates AttentionBackend subclasses, got {cls!r}")
        if name in _REGISTRY:
            raise ValueError(f"backend {name!r} is already registered (by {_REGISTRY[name].source}, "
                             f"class {_REGISTRY[name].cls.__qualname__})")
        if "name" in cls.__dict__:
            raise ValueError(f"class {cls.__qualname__} is already registered as {cls.__dict__['name']!r}; "
                             f"register a subclass for {name!r}")
        cls.name, cls.family, cls.Params = name, family, params
        if caps is not None:
            cls.default_capabilities = caps
        doc = description or ((cls.__doc__ or "").strip().splitlines() or [""])[0]
        _REGISTRY[name] = BackendSpec(name, cls, family, params, doc, _loading_source)
        return cls

    return decorate


def _pending() -> dict[str, importlib.metadata.EntryPoint]:
    global _PENDING
    if _PENDING is None:
        _PENDING = {}
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in _REGISTRY:
                warnings.warn(f"entry point {ep.value!r} wants backend name {ep.name!r}, "
                              f"which is already registered; ignoring it", stacklevel=2)
                continue
            _PENDING[ep.name] = ep
    return _PENDING


def reload_entry_points() -> None:
    """Forget discovered entry points (e.g. after installing a plugin in a running process)."""
    global _PENDING
    _PENDING = None


def _load_entry_point(name: str) -> None:
    global _loading_source
    ep = _pending().pop(name)
    dist = getattr(ep, "dist", None)
    _loading_source = f"entry point {ep.value}" + (f" ({dist.name})" if dist is not None else "")
    try:
        obj = ep.load()
    except Exception as exc:
        raise ImportError(f"backend {name!r} comes from entry point {ep.value!r}, which failed to load: {exc}") from exc
    finally:
        _loading_source = "builtin"
    if name not in _REGISTRY:
        raise ImportError(f"entry point {ep.value!r} loaded ({type(obj).__name__}) but did not register a "
                          f"backend named {name!r}; decorate the class with @mocbench.register_backend({name!r}, ...)")


def list_backends() -> list[str]:
    """Every known backend name: registered ones and not-yet-imported entry points."""
    return sorted(set(_REGISTRY) | set(_pending()))


def backend_spec(name: str) -> BackendSpec:
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a string, got {name!r}")
    if name not in _REGISTRY and name in _pending():
        _load_entry_point(name)
    if name not in _REGISTRY:
        raise KeyError(f"unknown backend {name!r}; known backends: {', '.join(list_backends())}")
    return _REGISTRY[name]


def backend_specs() -> list[BackendSpec]:
    """Specs of every backend, importing pending entry points."""
    return [backend_spec(n) for n in list_backends()]


def get_backend(name: str, **params: Any) -> AttentionBackend:
    """Build backend ``name`` with validated ``params`` (unknown or ill-typed params raise)."""
    spec = backend_spec(name)
    return spec.cls(build_params(spec.params, name, params))
