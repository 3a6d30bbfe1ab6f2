"""The sweep spec: a base cell config plus axes (``grid``: cartesian, ``zip``: parallel lists),
optionally per named ablation, expanded into cells with stable keys.

A cell is a :class:`CellConfig` (structured OmegaConf: unknown keys are errors naming the key).
``backend.params.*`` and ``train.overrides.*`` (task config keys) are free-form and validated when
the cell is built (backend params by the registry, task keys by ``load_task_config``). The key of a
cell is a hash of its resolved config, so a cell that appears in two ablations runs once.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

from omegaconf import OmegaConf

from mocbench.bench.config import DTYPES, PASSES
from mocbench.config import BackendConfig, ConfigError, Geometry, config_errors, load_config, plain, stable_hash
from mocbench.errors import require_int
from mocbench.eval.runner import EVALUATORS
from mocbench.registry import get_backend
from mocbench.sweep.launcher_config import LauncherConfig, check_launcher_config

STAGES = ("train", "finetune", "sample", "eval", "bench")


@dataclass
class TrainSpec:
    task_config: str = "configs/task/quickstart_multishot.yaml"
    overrides: dict[str, Any] = field(default_factory=dict)  # task config keys (dotted), e.g. trainer.max_steps
    backend: BackendConfig | None = None  # the backend the train stage trains with (None: dense)
    checkpoint: str | None = None  # use these weights instead of a train stage
    finetune_overrides: dict[str, Any] = field(default_factory=dict)  # finetune stage: task keys (e.g. max_steps)


@dataclass
class SampleSpec:
    num: int = 4
    seed: int = 0
    steps: int | None = None
    record_routing: bool = True  # MoC: per layer/head shot-to-shot routing counts (routing.json)


@dataclass
class EvalSpec:
    evaluators: list[str] = field(default_factory=lambda: ["fidelity", "val_loss", "vbench_proxy", "memory", "cost"])
    reference: BackendConfig = field(default_factory=BackendConfig)  # fidelity reference, sampled from the same weights
    val_num: int | None = None
    vbench: dict[str, Any] = field(default_factory=dict)  # VBenchSettings fields (python, cache_dir, device, ...)


@dataclass
class BenchSpec(Geometry):
    """Kernel latency of the cell's backend on one workload (mocbench.bench.runner.measure_cell): a
    :class:`~mocbench.config.Geometry` (``tokens_per_frame``, ``text_tokens``, ``text_placement``,
    ``frame_shape``) with one shot and frame count."""

    shots: int = 4
    frames: int = 8
    heads: int = 2
    head_dim: int = 64
    batch: int = 1
    dtype: str = "float32"
    passes: list[str] = field(default_factory=lambda: ["fwd"])
    repeats: int = 5
    warmup: int = 1
    max_seconds_per_cell: float = 10.0


@dataclass
class CellConfig:
    stages: list[str] = field(default_factory=lambda: ["train", "sample", "eval"])
    seed: int = 0
    backend: BackendConfig = field(default_factory=BackendConfig)
    train: TrainSpec = field(default_factory=TrainSpec)
    sample: SampleSpec = field(default_factory=SampleSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    bench: BenchSpec = field(default_factory=BenchSpec)


@dataclass
class AblationSpec:
    grid: dict[str, Any] = field(default_factory=dict)
    zip: dict[str, Any] = field(default_factory=dict)
    set: dict[str, Any] = field(default_factory=dict)  # fixed dotted overrides of this ablation


@dataclass
class SweepConfig:
    name: str = "sweep"
    out_dir: str | None = None  # default runs/sweep/<name>
    results_dir: str | None = None  # committed outputs (tables, figures, store copy, routing json)
    threads: int | None = None
    base: CellConfig = field(default_factory=CellConfig)
    grid: dict[str, Any] = field(default_factory=dict)
    zip: dict[str, Any] = field(default_factory=dict)
    ablations: dict[str, AblationSpec] = field(default_factory=dict)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)  # jobs: grouping and resources

    @property
    def out_path(self) -> str:
        return self.out_dir or f"runs/sweep/{self.name}"


@dataclass
class SweepCell:
    key: str
    config: CellConfig
    ablations: list[str]
    axes: dict[str, Any]  # the axis values that made this cell (for tables)

    @property
    def label(self) -> str:
        return ",".join(f"{k.split('.')[-1]}={v}" for k, v in self.axes.items()) or self.config.backend.name


def load_sweep(path: str | None, overrides: list[str] | None = None) -> SweepConfig:
    cfg = load_config(SweepConfig, path, overrides)
    check_launcher_config(cfg.launcher)
    expand(cfg)  # validates everything
    return cfg


def _axis_lists(where: str, axes: dict) -> dict[str, list]:
    out = {}
    for key, values in _flat("", {k: plain(v) for k, v in axes.items()}).items():  # a.b=[..] overrides nest
        values = plain(values)
        if not isinstance(values, list):
            raise ConfigError(f"{where}.{key}: an axis must be a list of values, got {values!r}")
        if not values:
            raise ConfigError(f"{where}.{key}: empty axis (give at least one value)")
        out[key] = values
    return out


def _points(where: str, grid: dict, zip_: dict) -> list[dict]:
    g, z = _axis_lists(f"{where}grid", grid), _axis_lists(f"{where}zip", zip_)
    lengths = {k: len(v) for k, v in z.items()}
    if len(set(lengths.values())) > 1:
        raise ConfigError(f"{where}zip: lists must have equal lengths, got {lengths}")
    both = set(g) & set(z)
    if both:
        raise ConfigError(f"{where}: key(s) {sorted(both)} are in both grid and zip")
    zipped = [dict(zip(z, vals)) for vals in zip(*z.values())] if z else [{}]
    grid_pts = [dict(zip(g, vals)) for vals in itertools.product(*g.values())] if g else [{}]
    return [{**a, **b} for a in grid_pts for b in zipped]


def _flat(prefix: str, d: dict) -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flat(key, v))
        else:
            out[key] = v
    return out


def build_cell(base: CellConfig, values: dict[str, Any]) -> CellConfig:
    """``base`` with dotted ``values`` applied; unknown keys / wrong types raise ConfigError naming the key."""
    with config_errors("invalid sweep", default_key=next(iter(values), "")):
        cfg = OmegaConf.structured(base)
        for key, value in values.items():
            OmegaConf.update(cfg, key, value, merge=False)
        return OmegaConf.to_object(cfg)


def check_cell(cell: CellConfig, where: str) -> None:
    bad = [s for s in cell.stages if s not in STAGES]
    if bad:
        raise ConfigError(f"{where}: stages: unknown stage(s) {bad}; known: {', '.join(STAGES)}")
    if not cell.stages:
        raise ConfigError(f"{where}: stages: give at least one of {', '.join(STAGES)}")
    for path, spec in (("backend", cell.backend), ("eval.reference", cell.eval.reference),
                       ("train.backend", cell.train.backend)):
        if spec is None:
            continue
        try:
            get_backend(spec.name, **spec.params)
        except (ValueError, TypeError, KeyError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            raise ConfigError(f"{where}: {path}: {msg}") from None
    check_numbers(cell, where)
    bad = [e for e in cell.eval.evaluators if e not in EVALUATORS]
    if bad:
        raise ConfigError(f"{where}: eval.evaluators: unknown {bad}; known: {', '.join(EVALUATORS)}")
    if any(s in cell.stages for s in ("sample", "eval", "finetune")) and not cell.train.checkpoint \
            and "train" not in cell.stages:
        raise ConfigError(f"{where}: stages: sample/eval/finetune need a 'train' stage or train.checkpoint")


def check_numbers(cell: CellConfig, where: str) -> None:
    """Counts and sizes of the sample, eval and bench stages (>= 1; warm-up >= 0; a time limit > 0), and the
    bench layout (checked where every layout is built)."""
    s, b = cell.sample, cell.bench
    for key, value, low in (("sample.num", s.num, 1), ("sample.steps", s.steps, 1),
                            ("eval.val_num", cell.eval.val_num, 1), ("bench.warmup", b.warmup, 0),
                            *((f"bench.{k}", getattr(b, k), 1) for k in ("heads", "head_dim", "batch", "repeats"))):
        if value is not None:
            require_int(f"{where}: {key}", value, low)
    try:
        b.with_counts(b.shots, b.frames).build()
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: bench: {exc}") from None
    if not b.max_seconds_per_cell > 0:
        raise ConfigError(f"{where}: bench.max_seconds_per_cell must be > 0, got {b.max_seconds_per_cell}")
    if b.dtype not in DTYPES:
        raise ConfigError(f"{where}: bench.dtype must be one of {', '.join(DTYPES)}, got {b.dtype!r}")
    bad = [p for p in b.passes if p not in PASSES]
    if bad or not b.passes:
        raise ConfigError(f"{where}: bench.passes must be a non-empty list of {', '.join(PASSES)}, got {list(b.passes)}")


def _resolved_params(spec: BackendConfig | None) -> Any:
    """A backend's params with its defaults filled in (so ``{}`` and the explicit defaults hash alike)."""
    if spec is None:
        return None
    p = get_backend(spec.name, **spec.params).params
    return {"name": spec.name, "params": asdict(p) if is_dataclass(p) else dict(spec.params)}


# Fields added to the cell config after sweeps had been run: out of the hash at their defaults (stable keys).
# Geometry fields added later default to None and are left out when unset, as in bench cell keys.
_ADDED_LATER = (("eval", "vbench"), ("bench", "text_placement"))


def cell_key(cell: CellConfig) -> str:
    """Hash of the resolved cell config (backend params with their defaults filled in)."""
    d = asdict(cell)
    d["backend"] = _resolved_params(cell.backend)
    d["train"]["backend"] = _resolved_params(cell.train.backend)
    d["eval"]["reference"] = _resolved_params(cell.eval.reference)
    d["bench"] = {k: v for k, v in d["bench"].items() if v is not None}
    defaults = asdict(CellConfig())
    for section, key in _ADDED_LATER:
        if d[section][key] == defaults[section][key]:
            del d[section][key]
    return stable_hash(d)


def expand(cfg: SweepConfig) -> list[SweepCell]:
    """Every distinct cell of the sweep, in config order (a cell shared by ablations is listed once)."""
    groups: list[tuple[str, dict, list[dict]]] = []
    if cfg.ablations:
        for name, ab in cfg.ablations.items():
            pts = _points(f"ablations.{name}.", {**cfg.grid, **ab.grid}, {**cfg.zip, **ab.zip})
            groups.append((name, {k: plain(v) for k, v in ab.set.items()}, pts))
    else:
        groups.append(("", {}, _points("", cfg.grid, cfg.zip)))
    cells: dict[str, SweepCell] = {}
    for name, fixed, pts in groups:
        for pt in pts:
            where = f"ablations.{name}" if name else "sweep"
            cell = build_cell(cfg.base, {**_flat("", fixed), **pt})
            check_cell(cell, f"{where} cell {pt}")
            key = cell_key(cell)
            if key in cells:
                if name and name not in cells[key].ablations:
                    cells[key].ablations.append(name)
            else:
                cells[key] = SweepCell(key, cell, [name] if name else [], dict(pt))
    return list(cells.values())
