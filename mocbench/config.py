"""Structured configs (OmegaConf over dataclasses): YAML + ``key=value`` overrides, validated.

Unknown keys and wrong types are errors that name the full key (``layout.tokens_per_frme``).
Semantic checks (layout sizes, backend params) run when the config is turned into objects,
with the same error messages as the Python API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mocbench.layout import TokenLayout

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


@dataclass
class LayoutConfig:
    """A token layout. ``frames`` and ``text_tokens`` are an int (same for every shot) or a list per shot."""

    shots: Optional[int] = None  # None: from the lists' length, else 1
    frames: Any = 16
    tokens_per_frame: int = 256
    text_tokens: Any = 64
    text_placement: str = "interleaved"

    def build(self) -> TokenLayout:
        frames, text = _plain(self.frames), _plain(self.text_tokens)
        shots = self.shots
        if shots is None:
            shots = len(frames) if isinstance(frames, list) else 1
        if shots == 1 and not isinstance(frames, list) and not isinstance(text, list):
            return TokenLayout.single_shot(text_tokens=text, frames=frames, tokens_per_frame=self.tokens_per_frame)
        return TokenLayout.multi_shot(text_tokens=text, frames=frames, tokens_per_frame=self.tokens_per_frame,
                                      text_placement=self.text_placement, shots=shots)


@dataclass
class BackendConfig:
    """An attention backend by registry name and its params (``mocbench backends`` lists both)."""

    name: str = "dense"
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class PlanConfig:
    """``mocbench plan``: analytic accounting of ``backend`` (with ``params``) next to ``compare`` rows."""

    layout: LayoutConfig = field(default_factory=LayoutConfig)
    backend: str = "moc"
    params: Dict[str, Any] = field(default_factory=dict)
    compare: List[str] = field(default_factory=lambda: ["dense"])
    head_dim: int = 128
    batch: int = 1
    heads: int = 1
    title: Optional[str] = None


def _plain(value: Any) -> Any:
    return OmegaConf.to_object(value) if OmegaConf.is_config(value) else value


def load_config(schema: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Merge ``schema`` defaults <- YAML file <- dotlist overrides; return the dataclass instance."""
    try:
        cfg = OmegaConf.structured(schema)
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise ConfigError(f"config file {str(p)!r} does not exist")
            cfg = OmegaConf.merge(cfg, OmegaConf.load(p))
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"overrides must look like key=value, got {bad}")
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        msg = str(exc).strip().splitlines()[0]
        raise ConfigError(f"invalid config{f' key {key!r}' if key else ''}: {msg}") from None


def add_config_arguments(parser, config_help: str, *, optional: bool = True,
                         overrides_help: str = "key=value overrides (OmegaConf dotlist)") -> None:
    """The ``CONFIG [key=value ...]`` positionals every config-driven subcommand takes (see load_config)."""
    if optional:
        parser.add_argument("config", nargs="?", help=config_help)
    else:
        parser.add_argument("config", help=config_help)
    parser.add_argument("overrides", nargs="*", help=overrides_help)
