"""Structured configs (OmegaConf over dataclasses): YAML + ``key=value`` overrides, validated.

Unknown keys and wrong types are errors that name the full key (``layout.tokens_per_frme``).
Semantic checks (layout sizes, backend params) run when the config is turned into objects,
with the same error messages as the Python API.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mocbench.errors import ConfigError, read_text, yaml_problem
from mocbench.layout import TokenLayout

T = TypeVar("T")

__all__ = ["BackendConfig", "ConfigError", "Geometry", "LayoutConfig", "PlanConfig", "add_config_arguments",
           "config_errors", "dotlist", "load_config", "load_yaml", "parse_overrides", "stable_hash"]


@dataclass
class Geometry:
    """Frame and caption geometry: the keys every layout config shares, defined once here and flat in YAML
    (``layout:`` of ``mocbench plan``, a bench workload, a sweep's ``bench:`` stage; a bench cell holds one).

    :meth:`LayoutConfig.build` is the one place a config becomes a :class:`~mocbench.TokenLayout`, which
    validates every value (errors name the field and the bad value). A field added here reaches every config
    above; give it a default of None (unset), because keys hash a layout without its unset fields
    (:meth:`LayoutConfig.key_fields`), so stores written before the field existed keep their keys.
    """

    tokens_per_frame: int = 64
    text_tokens: int = 16  # caption tokens per shot (or of the one global caption)
    text_placement: str = "interleaved"  # interleaved | front | back (moc-spec §2)
    frame_shape: Optional[List[int]] = None  # [h, w] patch rows x columns (h * w = tokens_per_frame); None: unknown

    def geometry(self) -> dict[str, Any]:
        """The :class:`Geometry` fields as plain values (to carry a geometry into another config)."""
        return {f.name: plain(getattr(self, f.name)) for f in fields(Geometry)}

    def with_counts(self, shots: int | None, frames: Any) -> LayoutConfig:
        """This geometry with ``shots`` shots of ``frames`` frames: one layout."""
        return LayoutConfig(shots=shots, frames=frames, **self.geometry())


@dataclass
class LayoutConfig(Geometry):
    """One token layout: a :class:`Geometry` with its shot and frame counts. ``frames`` and ``text_tokens``
    are an int (same for every shot) or a list per shot."""

    shots: Optional[int] = None  # None: from the lists' length, else 1
    frames: Any = 16
    text_tokens: Any = 16  # an int, or one per shot (a list)

    def build(self) -> TokenLayout:
        """The :class:`~mocbench.TokenLayout` (validated there: a ValueError / TypeError names the field)."""
        frames, text, frame_shape = plain(self.frames), plain(self.text_tokens), plain(self.frame_shape)
        shots = self.shots
        if shots is None:
            shots = len(frames) if isinstance(frames, list) else 1
        if shots == 1 and not isinstance(frames, list) and not isinstance(text, list):
            return TokenLayout.single_shot(text_tokens=text, frames=frames, tokens_per_frame=self.tokens_per_frame,
                                           text_placement=self.text_placement, frame_shape=frame_shape)
        return TokenLayout.multi_shot(text_tokens=text, frames=frames, tokens_per_frame=self.tokens_per_frame,
                                      text_placement=self.text_placement, shots=shots, frame_shape=frame_shape)

    def key_fields(self) -> dict[str, Any]:
        """Every field as a plain value, unset (None) ones left out: what a key hashes."""
        return {f.name: v for f in fields(self) if (v := plain(getattr(self, f.name))) is not None}


@dataclass
class BackendConfig:
    """An attention backend by registry name and its params (``mocbench backends`` lists both)."""

    name: str = "dense"
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class PlanConfig:
    """``mocbench plan``: analytic accounting of ``backend`` (with ``params``) next to ``compare`` rows.

    A ``compare`` entry is a backend name (default params) or ``{name: ..., params: {...}, label: ...}``.
    ``block_shape`` is the ``[bq, bk]`` grid of the block density column (moc-spec §10).
    """

    layout: LayoutConfig = field(default_factory=lambda: LayoutConfig(frames=16, tokens_per_frame=256,
                                                                      text_tokens=64))
    backend: str = "moc"
    params: Dict[str, Any] = field(default_factory=dict)
    compare: List[Any] = field(default_factory=lambda: ["dense"])
    head_dim: int = 128
    batch: int = 1
    heads: int = 1
    block_shape: List[int] = field(default_factory=lambda: [128, 128])
    title: Optional[str] = None

    def compare_entries(self) -> list[tuple[str, dict, str | None]]:
        """``compare`` as (name, params, label or None), each entry checked."""
        out = []
        for i, entry in enumerate(plain(self.compare)):
            if isinstance(entry, str):
                out.append((entry, {}, None))
                continue
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ConfigError(f"compare[{i}] must be a backend name or a mapping with 'name' (and optional "
                                  f"'params', 'label'), got {entry!r}")
            unknown = sorted(set(entry) - {"name", "params", "label"})
            if unknown:
                raise ConfigError(f"compare[{i}] has unknown key(s) {unknown}; accepted: name, params, label")
            params = entry.get("params") or {}
            if not isinstance(params, dict):
                raise ConfigError(f"compare[{i}].params must be a mapping of backend params, got {params!r}")
            label = entry.get("label")
            if label is not None and not isinstance(label, str):
                raise ConfigError(f"compare[{i}].label must be a string, got {label!r}")
            out.append((entry["name"], params, label))
        return out


def plain(value: Any) -> Any:
    """``value`` as plain Python (dicts, lists, dataclasses) when it is an OmegaConf node, else as it is."""
    return OmegaConf.to_object(value) if OmegaConf.is_config(value) else value


def stable_hash(obj: Any, length: int = 16) -> str:
    """The one hash of every key in mocbench (result rows, sweep cells, shared runs, sample sets):
    sha256 of ``obj`` as canonical JSON (sorted keys; non-JSON values by ``str``), first ``length`` hex
    digits. Stable across processes, machines and Python versions (unlike ``hash()``)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


@contextmanager
def config_errors(what: str = "invalid config", key: str | None = None,
                  default_key: str | None = None) -> Iterator[None]:
    """Turn an OmegaConf error inside the block into one ``ConfigError`` line naming the key:
    ``key`` (the override as typed), else the error's own full key, else ``default_key``
    (``invalid config key 'layout.shots': Value 'x' ...``)."""
    try:
        yield
    except OmegaConfBaseException as exc:
        name = key or getattr(exc, "full_key", None) or default_key
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{what}{f' key {name!r}' if name else ''}: {msg}") from None


def load_yaml(path: str | Path, what: str = "config file") -> DictConfig:
    """A YAML mapping from ``path``; a missing/unreadable/binary file, invalid YAML (with its line), an
    empty file or a top level that is not a mapping is a ``ConfigError`` naming the file."""
    text = read_text(path, what)
    try:
        cfg = OmegaConf.load(io.StringIO(text))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {yaml_problem(exc)}") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{what} {str(path)!r}: {str(exc).strip().splitlines()[0]}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{what} {str(path)!r} must be a YAML mapping of keys (key: value), "
                          f"got a {type(OmegaConf.to_container(cfg)).__name__}")
    if not cfg:
        raise ConfigError(f"{what} {str(path)!r} is empty (no keys); give a config with keys or no file at all")
    return cfg


def parse_overrides(overrides: list[str] | None) -> list[str]:
    """The ``key=value`` overrides as a list; anything else is a ConfigError listing the culprits."""
    overrides = list(overrides or [])
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad}")
    return overrides


def dotlist(d: dict, prefix: str = "") -> list[str]:
    """A nested mapping as ``key=value`` overrides (dotted keys; lists as ``[a,b]``, None as ``null``)."""
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out += dotlist(v, key + ".")
        elif isinstance(v, list):
            out.append(f"{key}=[{','.join(map(str, v))}]")
        else:
            out.append(f"{key}={'null' if v is None else v}")
    return out


def load_config(schema: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Merge ``schema`` defaults <- YAML file <- dotlist overrides; return the dataclass instance."""
    overrides = parse_overrides(overrides)
    cfg = OmegaConf.structured(schema)
    if path is not None:
        data = load_yaml(path)
        with config_errors(f"config file {str(path)!r}: invalid"):
            cfg = OmegaConf.merge(cfg, data)
    with config_errors():
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
        return OmegaConf.to_object(cfg)


def add_config_arguments(parser, config_help: str, *, optional: bool = True,
                         overrides_help: str = "key=value overrides (OmegaConf dotlist)") -> None:
    """The ``CONFIG [key=value ...]`` positionals every config-driven subcommand takes (see load_config)."""
    if optional:
        parser.add_argument("config", nargs="?", help=config_help)
    else:
        parser.add_argument("config", help=config_help)
    parser.add_argument("overrides", nargs="*", help=overrides_help)
