"""The ``mocbench bench`` config: a sweep of backends x workload families, and its cells.

A *cell* is one (backend entry, workload family, shots, frames, pass) combination; it is the
unit that is validated, timed and written as one row of the result store. Its key is a hash
of everything that changes the measurement (backend + params, the expanded workload, the
timing and validation settings), so re-running a config skips cells that are already done.

YAML shape (see configs/bench/)::

    name: cpu_quick
    output: runs/cpu_quick/results.csv   # optional; --out overrides it
    backends:
      - {name: dense}
      - {name: moc, params: {top_k: 2, chunking: frame}}
    workloads:
      - {name: multishot, shots: [1, 2, 4], frames: [4], tokens_per_frame: 64, text_tokens: 16,
         batch: 1, heads: 2, head_dim: 64, dtype: float32, device: cpu, passes: [fwd]}
    timing: {warmup: 2, repeats: 7}
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from omegaconf import OmegaConf

from mocbench.config import (
    BackendConfig,
    ConfigError,
    Geometry,
    LayoutConfig,
    config_errors,
    load_config,
    parse_overrides,
    plain,
    stable_hash,
)
from mocbench.layout import TokenLayout
from mocbench.registry import get_backend

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64,
}
DEVICES = ("cpu", "cuda")
PASSES = ("fwd", "fwd+bwd")


@dataclass
class BackendEntry(BackendConfig):
    """One backend of the sweep: a registry name, its params, an optional display label."""

    label: str | None = None  # default: the backend's own label (name + non-default params)


@dataclass
class WorkloadConfig(Geometry):
    """A workload family: a :class:`~mocbench.config.Geometry` (``tokens_per_frame``, ``text_tokens``,
    ``text_placement``, ``frame_shape``) swept over ``shots`` x ``frames``; every (shots, frames) pair is one
    layout, every pass one cell."""

    name: str = "multishot"
    shots: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    frames: list[int] = field(default_factory=lambda: [4])  # frames per shot
    batch: int = 1
    heads: int = 2
    head_dim: int = 64
    dtype: str = "float32"
    device: str = "cpu"
    passes: list[str] = field(default_factory=lambda: ["fwd"])  # "fwd" and/or "fwd+bwd"


@dataclass
class TimingConfig:
    """Warm-up calls, timed repeats (median and IQR are reported), and the CPU inner loop."""

    warmup: int = 2
    repeats: int = 7
    min_repeat_ms: float = 2.0  # CPU: a repeat runs the call enough times to last at least this long
    max_inner: int = 50  # CPU: cap on calls per repeat
    l2_flush: bool = True  # CUDA: overwrite a 256 MiB buffer before every repeat
    max_seconds_per_cell: float = 120.0  # stop repeating after this (the repeats done are reported)
    # Time every cell side by side with the reference backend of its workload cell (the top-level
    # ``reference`` label): repeats alternate on the same inputs, and the row records the reference's
    # time and the median (IQR) of the per-repeat ratios: a speed-up measured in one run.
    paired_reference: bool = False


@dataclass
class ValidateConfig:
    """Validation before timing on a shrunken copy of the cell (same shots, dtype, device, head_dim)."""

    enabled: bool = True
    max_frames: int = 3
    max_tokens_per_frame: int = 8
    max_text_tokens: int = 4
    heads: int = 2
    seed: int = 1234


@dataclass
class BenchConfig:
    """``mocbench bench``: every backend entry x every workload cell, timed, into one result store."""

    name: str = "bench"
    output: str | None = None  # default runs/<name>/results.csv (committed results only when asked for)
    seed: int = 0
    reference: str = "dense"  # the label speed-ups are computed against
    threads: int | None = None  # CPU: torch.set_num_threads for the run (None: torch's default)
    # Memory budget of one cell in GiB (None: free CUDA memory / MemAvailable); see bench/memory.py
    max_memory_gib: float | None = None
    backends: list[BackendEntry] = field(default_factory=lambda: [BackendEntry()])
    workloads: list[WorkloadConfig] = field(default_factory=lambda: [WorkloadConfig()])
    timing: TimingConfig = field(default_factory=TimingConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)

    @property
    def output_path(self) -> str:
        return self.output or f"runs/{self.name}/results.csv"


@dataclass(frozen=True)
class Cell:
    """One measurement: a backend entry on one expanded workload with one pass."""

    backend: str
    params: dict
    label: str
    workload: str
    geometry: LayoutConfig  # the workload's geometry with this cell's shots and frames
    batch: int
    heads: int
    head_dim: int
    dtype: str
    device: str
    pass_: str
    key: str

    def layout(self) -> TokenLayout:
        return self.geometry.build()

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def config_hash(cfg: BenchConfig) -> str:
    """Hash of the whole config except where it is written (moving a store keeps its hash) and the
    memory budget."""
    d = asdict(cfg)
    d.pop("output", None)
    d.pop("max_memory_gib", None)  # a budget decides which cells run, not what a measurement means
    return stable_hash(d)


def check_config(cfg: BenchConfig) -> None:
    """Semantic checks that OmegaConf's type checks cannot do; errors name the key."""
    if not cfg.backends:
        raise ConfigError("backends must list at least one backend")
    if not cfg.workloads:
        raise ConfigError("workloads must list at least one workload")
    for i, b in enumerate(cfg.backends):
        try:
            get_backend(b.name, **plain(b.params))
        except (KeyError, ValueError, TypeError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            raise ConfigError(f"backends[{i}] ({b.name}): {msg}") from None
    labels = [entry_label(b) for b in cfg.backends]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(f"backends: duplicate labels {dup}; give the entries distinct params or a 'label'")
    if cfg.timing.paired_reference and cfg.reference not in labels:
        raise ConfigError(f"timing.paired_reference needs the reference {cfg.reference!r} among the backends' labels "
                          f"({', '.join(labels)}); set reference= one of them")
    for i, w in enumerate(cfg.workloads):
        at = f"workloads[{i}]"
        if w.dtype not in DTYPES:
            raise ConfigError(f"{at}.dtype must be one of {', '.join(DTYPES)}, got {w.dtype!r}")
        if w.device not in DEVICES:
            raise ConfigError(f"{at}.device must be one of {', '.join(DEVICES)}, got {w.device!r}")
        bad = [p for p in w.passes if p not in PASSES]
        if bad or not w.passes:
            raise ConfigError(f"{at}.passes must be a non-empty list of {', '.join(PASSES)}, got {list(w.passes)}")
        for key in ("shots", "frames"):
            values = getattr(w, key)
            if not values or any(v < 1 for v in values):
                raise ConfigError(f"{at}.{key} must be a non-empty list of ints >= 1, got {list(values)}")
        for key in ("batch", "heads", "head_dim"):
            if getattr(w, key) < 1:
                raise ConfigError(f"{at}.{key} must be >= 1, got {getattr(w, key)}")
        try:  # the geometry, checked where every layout is built
            w.with_counts(w.shots[0], w.frames[0]).build()
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{at}: {exc}") from None
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"threads must be >= 1 or null, got {cfg.threads}")
    if cfg.max_memory_gib is not None and not (math.isfinite(cfg.max_memory_gib) and cfg.max_memory_gib > 0):
        raise ConfigError(f"max_memory_gib (--max-memory) must be a finite number of GiB > 0 or null, "
                          f"got {cfg.max_memory_gib}")
    check_timing(cfg.timing)
    v = cfg.validate
    for key in ("max_frames", "max_tokens_per_frame", "heads"):
        if getattr(v, key) < 1:
            raise ConfigError(f"validate.{key} must be >= 1, got {getattr(v, key)}")
    if v.max_text_tokens < 0:
        raise ConfigError(f"validate.max_text_tokens must be >= 0, got {v.max_text_tokens}")


def check_timing(t: TimingConfig, where: str = "timing") -> None:
    """Every timing setting is a number in range (negative or NaN times would still give 'ok' rows)."""
    for key, low in (("warmup", 0), ("repeats", 1), ("max_inner", 1)):
        if getattr(t, key) < low:
            raise ConfigError(f"{where}.{key} must be >= {low}, got {getattr(t, key)}")
    if not (math.isfinite(t.min_repeat_ms) and t.min_repeat_ms >= 0):
        raise ConfigError(f"{where}.min_repeat_ms must be a finite number >= 0, got {t.min_repeat_ms}")
    if not t.max_seconds_per_cell > 0:  # inf: no limit
        raise ConfigError(f"{where}.max_seconds_per_cell must be > 0 (inf: no limit), got {t.max_seconds_per_cell}")


def load_bench_config(path: str | None = None, overrides: list[str] | None = None) -> BenchConfig:
    """Schema <- YAML <- overrides, like :func:`mocbench.config.load_config`, but an override may
    index into a list (``workloads.0.shots=[1,2]``, ``backends.1.params.top_k=3``); then checked."""
    overrides = parse_overrides(overrides)
    cfg = load_config(BenchConfig, path)
    if overrides:
        node = OmegaConf.structured(cfg)
        for item in overrides:
            key, _, text = item.partition("=")
            with config_errors(key=key):
                value = OmegaConf.from_dotlist([f"value={text}"])["value"]
                OmegaConf.update(node, key, value, merge=True)
        with config_errors():
            cfg = OmegaConf.to_object(node)
    check_config(cfg)
    return cfg


def reference_entry(cfg: BenchConfig) -> BackendEntry | None:
    """The backend entry whose label is ``cfg.reference`` (None when no entry has it)."""
    return next((b for b in cfg.backends if entry_label(b) == cfg.reference), None)


def entry_label(b: BackendEntry) -> str:
    return b.label or get_backend(b.name, **plain(b.params)).label


def expand_cells(cfg: BenchConfig) -> list[Cell]:
    """Every cell of the sweep, workload-major (so a workload's dense row comes early)."""
    check_config(cfg)
    settings = {"timing": asdict(cfg.timing), "validate": asdict(cfg.validate), "seed": cfg.seed,
                "threads": cfg.threads}
    cells = []
    for w in cfg.workloads:
        for frames in w.frames:
            for shots in w.shots:
                for pass_ in w.passes:
                    for b in cfg.backends:
                        params = dict(plain(b.params))
                        geometry = w.with_counts(shots, frames)
                        shape = {"workload": w.name, "batch": w.batch, "heads": w.heads, "head_dim": w.head_dim,
                                 "dtype": w.dtype, "device": w.device, "pass_": pass_}
                        # the geometry's fields flat in the key, unset ones left out (older stores keep theirs)
                        key = stable_hash({"backend": b.name, "params": params, **geometry.key_fields(), **shape,
                                           **settings})
                        cells.append(Cell(backend=b.name, params=params, label=entry_label(b), geometry=geometry,
                                          key=key, **shape))
    return cells
