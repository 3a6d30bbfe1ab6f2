"""Structured config of ``mocbench train`` / ``mocbench sample`` and its validation.

YAML + ``key=value`` overrides merged over these dataclasses (unknown keys and wrong types are
errors naming the key, via :func:`mocbench.config.load_config`). :func:`check_task_config` then
checks what types cannot: sizes the model cannot handle, backend names and params, and
``trainer.*`` keys (passed straight to ``lightning.Trainer``, so ``trainer.devices=4
trainer.strategy=ddp trainer.num_nodes=2`` work from the command line).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf

from mocbench.config import BackendConfig, ConfigError, config_errors, load_config, parse_overrides
from mocbench.errors import require_int
from mocbench.layout import TokenLayout
from mocbench.registry import get_backend, list_backends
from mocbench.tasks.model import ModelConfig, stream_layout
from mocbench.tasks.shapeshots import PATTERNS, SHAPES, SIZES, STORY_KINDS, TEXTURES

TASKS = ("multi_shot", "single_shot")
SAMPLERS = ("euler", "heun")
TIMESTEP_SAMPLING = ("logit_normal", "uniform")


@dataclass
class DataConfig:
    """``source=shapeshots`` (generated) or ``folder`` (your mp4 + JSONL, see tasks/folder.py)."""

    source: str = "shapeshots"
    task: str = "story"  # ShapeShots story kind: story | recall | binding (see tasks/shapeshots.py)
    height: int = 16
    width: int = 16
    frames: int = 4  # per shot
    shots: int = 2
    text_tokens: int = 16  # caption tokens per shot (padded / truncated)
    num_entities: int = 3
    num_scenes: int = 2
    max_entities_per_shot: int = 2
    pan_prob: float = 0.3
    shapes: List[str] = field(default_factory=lambda: list(SHAPES))
    textures: List[str] = field(default_factory=lambda: list(TEXTURES))
    patterns: List[str] = field(default_factory=lambda: list(PATTERNS))
    sizes: List[str] = field(default_factory=lambda: list(SIZES))
    train_size: int = 1024
    val_size: int = 32
    batch_size: int = 16
    num_workers: int = 0
    seed: int = 0
    root: Optional[str] = None  # folder source
    index: str = "clips.jsonl"


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: Any = field(default_factory=lambda: [0.9, 0.99])
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # 0: no EMA; e.g. 0.999 keeps an EMA copy used for sampling
    caption_dropout: float = 0.1  # probability a sample's captions become <null> (for CFG)
    timestep_sampling: str = "logit_normal"
    timestep_mean: float = 0.8  # logit-normal mean (t=1 is noise; > 0 favours noisier times)
    timestep_std: float = 0.8


@dataclass
class SampleConfig:
    """Defaults of ``mocbench sample`` (each is also a command-line flag)."""

    steps: int = 20
    sampler: str = "euler"
    guidance: float = 1.0  # 1: no classifier-free guidance
    num: int = 4
    seed: int = 0
    scale: int = 4  # upscaling of frames in mp4s and contact sheets


@dataclass
class TaskConfig:
    task: str = "multi_shot"
    seed: int = 0
    out_dir: str = "runs/task"
    init_from: Optional[str] = None  # checkpoint whose weights start this run (e.g. dense -> moc fine-tune)
    resume: Optional[str] = None  # checkpoint path or "last" to continue a run (optimizer, step, ...)
    threads: Optional[int] = None  # torch CPU threads (None: torch's default); 1 is fastest on a busy 2-core box
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    trainer: Dict[str, Any] = field(default_factory=dict)  # lightning.Trainer kwargs


TRAINER_DEFAULTS: dict[str, Any] = {"max_steps": 1000, "log_every_n_steps": 10, "val_check_interval": None,
                                    "check_val_every_n_epoch": None, "limit_val_batches": 0,
                                    "num_sanity_val_steps": 0, "enable_progress_bar": True}


def load_task_config(path: str | None = None, overrides: list[str] | None = None,
                     base: dict | None = None) -> TaskConfig:
    """Defaults <- ``base`` (a checkpoint's saved config) <- YAML ``path`` <- overrides; validated."""
    if base is None:
        cfg = load_config(TaskConfig, path, overrides)
    else:
        overrides = parse_overrides(overrides)
        with config_errors("invalid saved config"):
            merged = OmegaConf.merge(OmegaConf.structured(TaskConfig), base)
        with config_errors():
            cfg = OmegaConf.to_object(OmegaConf.merge(merged, OmegaConf.from_dotlist(overrides)))
    check_task_config(cfg)
    return cfg


def task_layout(cfg: TaskConfig) -> TokenLayout:
    """The layout the task's model attends over for one sample of its data (see ``stream_layout``)."""
    d = cfg.data
    return stream_layout(cfg.model, d.shots, d.frames, d.height, d.width, d.text_tokens)


def to_dict(cfg: TaskConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg))


def check_task_config(cfg: TaskConfig) -> None:
    """Semantic checks; every message names the key and the bad value."""
    d, m = cfg.data, cfg.model

    def bad(key: str, msg: str) -> None:
        raise ConfigError(f"{key}: {msg}")

    if cfg.task not in TASKS:
        bad("task", f"must be one of {TASKS}, got {cfg.task!r}")
    if d.source not in ("shapeshots", "folder"):
        bad("data.source", f"must be 'shapeshots' or 'folder', got {d.source!r}")
    if d.task not in STORY_KINDS:
        bad("data.task", f"must be one of {list(STORY_KINDS)}, got {d.task!r}")
    for key, chosen, allowed in (("data.shapes", d.shapes, SHAPES), ("data.textures", d.textures, TEXTURES),
                                 ("data.patterns", d.patterns, PATTERNS), ("data.sizes", d.sizes, SIZES)):
        if not chosen or set(chosen) - set(allowed):
            bad(key, f"must be a non-empty subset of {list(allowed)}, got {list(chosen)}")
    if d.source == "folder" and not d.root:
        bad("data.root", "data.source=folder needs data.root=<folder with the JSONL index and mp4 files>")
    if cfg.task == "single_shot" and d.shots != 1:
        bad("data.shots", f"task=single_shot needs data.shots=1, got {d.shots}")
    for key, v in (("data.height", d.height), ("data.width", d.width), ("data.frames", d.frames),
                   ("data.shots", d.shots), ("data.batch_size", d.batch_size), ("data.train_size", d.train_size),
                   ("model.dim", m.dim), ("model.depth", m.depth), ("model.heads", m.heads),
                   ("model.patch_size", m.patch_size), ("model.temporal_patch", m.temporal_patch)):
        if v < 1:
            bad(key, f"must be >= 1, got {v}")
    if cfg.threads is not None and cfg.threads < 1:
        bad("threads", f"must be >= 1 or null, got {cfg.threads}")
    if d.text_tokens < 0:
        bad("data.text_tokens", f"must be >= 0, got {d.text_tokens}")
    if m.dim % m.heads:
        bad("model.heads", f"model.dim={m.dim} is not divisible by model.heads={m.heads}")
    for key, v in (("data.height", d.height), ("data.width", d.width)):
        if v % m.patch_size:
            bad(key, f"{v} px is not a multiple of model.patch_size={m.patch_size}; the model cannot cut it into patches")
    if d.frames > m.max_frames:
        bad("data.frames", f"{d.frames} > model.max_frames={m.max_frames}")
    if d.shots > m.max_shots:
        bad("data.shots", f"{d.shots} > model.max_shots={m.max_shots}")
    if m.prediction not in ("x", "v"):
        bad("model.prediction", f"must be 'x' or 'v', got {m.prediction!r}")
    check_sample_settings(cfg.sample)
    if cfg.optim.timestep_sampling not in TIMESTEP_SAMPLING:
        bad("optim.timestep_sampling", f"must be one of {TIMESTEP_SAMPLING}, got {cfg.optim.timestep_sampling!r}")
    if not 0 <= cfg.optim.caption_dropout <= 1:
        bad("optim.caption_dropout", f"must be in [0, 1], got {cfg.optim.caption_dropout}")
    if not 0 <= cfg.optim.ema_decay < 1:
        bad("optim.ema_decay", f"must be in [0, 1), got {cfg.optim.ema_decay}")
    check_backend(cfg.backend)
    check_trainer_keys(cfg.trainer)


def check_sample_settings(sc: SampleConfig) -> None:
    """``sample.*``: counts >= 1, a known sampler, a finite guidance."""
    for key in ("steps", "num", "scale"):
        require_int(f"sample.{key}", getattr(sc, key))
    if sc.sampler not in SAMPLERS:
        raise ConfigError(f"sample.sampler: must be one of {SAMPLERS}, got {sc.sampler!r}")
    if not math.isfinite(sc.guidance):
        raise ConfigError(f"sample.guidance: must be a finite number (1: no guidance), got {sc.guidance}")


def check_backend(b: BackendConfig) -> None:
    try:
        get_backend(b.name, **dict(b.params))
    except (KeyError, ValueError, TypeError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        key = "backend.name" if b.name not in list_backends() else "backend.params"
        raise ConfigError(f"{key}: {msg}") from None


def check_trainer_keys(trainer: dict) -> None:
    import lightning as L  # seconds to import: only this check needs it, so loading a task config stays quick

    known = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    unknown = sorted(set(trainer) - known)
    if unknown:
        raise ConfigError(f"trainer.{unknown[0]}: not a lightning.Trainer argument "
                          f"(unknown trainer keys: {unknown}; see lightning.Trainer's signature)")
