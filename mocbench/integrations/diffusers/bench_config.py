"""The ``mocbench bench-model`` config: one diffusers model, its inputs, the backends, timing and validation.

YAML shape (see configs/models/*.yaml)::

    name: cogvideox_cpu
    model: {architecture: cogvideox_5b.json, num_layers: 2}    # relative to the YAML file's folder
    inputs: {batch: 1, frames: 13, height: 16, width: 24, text_tokens: 226, dtype: float32, device: cpu}
    backends:
      - {name: dense}
      - {name: moc, params: {top_k: 2, chunking: frame, causal: false}}
    timing: {warmup: 1, repeats: 3}

``model.weights`` (``--weights DIR``) loads the transformer from a local diffusers folder instead of
drawing random weights (see :mod:`.weights`); relative to the working directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mocbench.bench.config import DEVICES, DTYPES, BackendEntry, entry_label
from mocbench.config import ConfigError, load_config, plain
from mocbench.registry import get_backend

OWN_LABEL = "diffusers (own attention)"  # the label of the row timing the model's own attention


@dataclass
class ModelConfig:
    """The transformer: an architecture config (JSON) and optional shallower depth, or local weights."""

    architecture: str = "configs/models/cogvideox_5b.json"  # relative to the YAML file's folder (or absolute)
    num_layers: int | None = None
    num_single_layers: int | None = None  # HunyuanVideo's single-stream layers
    seed: int = 0
    weights: str | None = None  # a local diffusers folder (pipeline or transformer); None: random weights


@dataclass
class InputConfig:
    """Latent video (after the VAE, before patching), caption and batch (2 = a classifier-free guidance pair)."""

    batch: int = 1
    frames: int = 13
    height: int = 60
    width: int = 90
    text_tokens: int = 226
    text_valid: list[int] | None = None  # real caption tokens per sample (HunyuanVideo, Mochi pad the rest)
    timestep: int = 500
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 1


@dataclass
class ModelValidateConfig:
    """Validation on the same weights at a shrunken latent shape (multiples of the patch sizes)."""

    enabled: bool = True
    frames: int = 2
    height: int = 8
    width: int = 8
    text_tokens: int = 8


@dataclass
class ModelTimingConfig:
    """Round-robin timing: warm-up rounds, timed rounds (median and IQR), a time cap per backend."""

    warmup: int = 1
    repeats: int = 3
    max_seconds: float = 600.0  # per backend; later rounds are dropped once all backends together exceed it
    l2_flush: bool = True  # CUDA: overwrite a 256 MiB buffer before every timed forward (mocbench.bench.timing)


@dataclass
class BenchModelConfig:
    """``mocbench bench-model``: one model, every backend validated and timed, one row each."""

    name: str = "bench_model"
    output: str | None = None  # default runs/<name>/results.csv
    threads: int | None = None  # CPU: torch.set_num_threads for the run
    fidelity: bool = True  # per-layer rel-L2 / cosine vs dense attention at the timed shape (one untimed forward)
    model: ModelConfig = field(default_factory=ModelConfig)
    inputs: InputConfig = field(default_factory=InputConfig)
    backends: list[BackendEntry] = field(default_factory=lambda: [BackendEntry()])
    timing: ModelTimingConfig = field(default_factory=ModelTimingConfig)
    validate: ModelValidateConfig = field(default_factory=ModelValidateConfig)

    @property
    def output_path(self) -> str:
        return self.output or f"runs/{self.name}/results.csv"

    @property
    def depth(self) -> dict[str, int]:
        """The depth overrides that are set (``num_layers``, ``num_single_layers``)."""
        return {k: v for k in ("num_layers", "num_single_layers") if (v := getattr(self.model, k)) is not None}


def load_bench_model_config(path: str | None, overrides: list[str] | None = None) -> BenchModelConfig:
    """Schema <- YAML <- overrides; ``model.architecture`` resolved against the YAML's folder; then checked."""
    cfg = load_config(BenchModelConfig, path, overrides)
    arch = Path(cfg.model.architecture)
    if not arch.is_absolute() and path is not None:
        arch = Path(path).parent / arch
    if not arch.is_file():
        raise ConfigError(f"model.architecture: {str(arch)!r} does not exist (a path relative to the config file)")
    cfg.model.architecture = str(arch)
    check_bench_model_config(cfg)
    return cfg


def check_bench_model_config(cfg: BenchModelConfig) -> None:
    """Every value a user can get wrong, named with what is accepted."""
    i = cfg.inputs
    if i.dtype not in DTYPES:
        raise ConfigError(f"inputs.dtype must be one of {sorted(DTYPES)}, got {i.dtype!r}")
    if i.device.split(":")[0] not in DEVICES:
        raise ConfigError(f"inputs.device must be one of {DEVICES} (optionally cuda:N), got {i.device!r}")
    for key in ("batch", "frames", "height", "width", "text_tokens"):
        if getattr(i, key) < 1:
            raise ConfigError(f"inputs.{key} must be >= 1, got {getattr(i, key)}")
    for key in ("frames", "height", "width", "text_tokens"):
        if getattr(cfg.validate, key) < 1:
            raise ConfigError(f"validate.{key} must be >= 1, got {getattr(cfg.validate, key)}")
    for key, value in cfg.depth.items():
        if value < 0:
            raise ConfigError(f"model.{key} must be >= 0 or null, got {value}")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"threads must be >= 1 or null, got {cfg.threads}")
    if not cfg.backends:
        raise ConfigError("backends must list at least one backend")
    t = cfg.timing
    if t.warmup < 0 or t.repeats < 1 or not t.max_seconds > 0:
        raise ConfigError(f"timing needs warmup >= 0, repeats >= 1, max_seconds > 0; got warmup={t.warmup}, "
                          f"repeats={t.repeats}, max_seconds={t.max_seconds}")
    for n, b in enumerate(cfg.backends):
        try:
            get_backend(b.name, **plain(b.params))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"backends.{n}: {exc}") from None
    labels = [entry_label(b) for b in cfg.backends]
    if len(set(labels)) != len(labels) or OWN_LABEL in labels:
        raise ConfigError(f"backends need distinct labels (set `label:`), got {labels}")
