"""Config of ``mocbench memory``: one task, named training runs, and the rows (backend x weights) to score.

The task is ShapeShots ``recall`` (no captions; later shots repeat shot 0) or ``binding`` (captions
name the returning entity; later shots repeat its introduction shot), see mocbench/tasks/shapeshots.py.

``task`` holds TaskConfig keys (``data.*``, ``model.*``, ``optim.*``, ``trainer.*``, ...) shared by every
run. Each entry of ``runs`` trains the task with its own backend, from scratch or, with ``init_from``,
from another run's final weights (a fine-tune), for ``steps`` steps (default: ``trainer.max_steps``).
Each entry of ``rows`` samples the same stories (same caption ids and noise) with the weights of
run ``run`` and attention ``backend`` (default: the run's own), then scores recall. A row's
``training`` is ``trained`` (its run's own backend, from scratch), ``finetuned`` (own backend,
``init_from``) or ``swap`` (another backend put into the run's weights without training).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mocbench.config import BackendConfig, ConfigError, dotlist, load_config
from mocbench.tasks.config import check_backend, load_task_config
from mocbench.tasks.train import shapes_config

MEMORY_TASKS = ("recall", "binding")  # ShapeShots story kinds with a returning entity in every later shot
BINDING_CAPTION_TOKENS = 2  # "entity <id>"


@dataclass
class RunConfig:
    backend: BackendConfig = field(default_factory=BackendConfig)
    init_from: str | None = None  # name of another run whose final weights start this one
    steps: int | None = None  # None: the task's trainer.max_steps


@dataclass
class RowConfig:
    label: str = ""
    run: str = "dense"  # whose weights
    backend: BackendConfig | None = None  # None: the run's own backend
    note: str = ""  # shown in the table (e.g. "leaks memory through captions")


@dataclass
class EvalSettings:
    stories: int = 128  # sampled stories (each gives shots - 1 recall pairs)
    seed: int = 0  # stories of the `sample` split from this seed; noise of story i: seed + i
    steps: int = 20  # sampling steps
    loss_stories: int = 64  # held-out (`val` split) stories for the per-shot flow loss
    loss_timesteps: list[float] = field(default_factory=lambda: [0.5])
    sheet_stories: int = 3  # stories in the contact sheet


@dataclass
class MemoryConfig:
    name: str = "memory"
    output: str | None = None  # default runs/NAME
    reference: str = "dense"  # row label the tests compare against
    task: dict[str, Any] = field(default_factory=dict)
    runs: dict[str, RunConfig] = field(default_factory=dict)
    rows: list[RowConfig] = field(default_factory=list)
    eval: EvalSettings = field(default_factory=EvalSettings)

    @property
    def output_path(self) -> str:
        return self.output or f"runs/{self.name}"


def load_memory_config(path: str | None, overrides: list[str] | None = None) -> MemoryConfig:
    cfg = load_config(MemoryConfig, path, overrides)
    check_memory_config(cfg)
    return cfg


def run_order(cfg: MemoryConfig) -> list[str]:
    """Run names, every run after the run it starts from (``init_from``)."""
    order: list[str] = []

    def visit(name: str, seen: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in seen:
            raise ConfigError(f"runs: init_from forms a cycle: {' -> '.join([*seen, name])}")
        parent = cfg.runs[name].init_from
        if parent is not None:
            visit(parent, (*seen, name))
        order.append(name)

    for name in cfg.runs:
        visit(name, ())
    return order


def row_backend(cfg: MemoryConfig, row: RowConfig) -> BackendConfig:
    return row.backend if row.backend is not None else cfg.runs[row.run].backend


def row_training(cfg: MemoryConfig, row: RowConfig) -> str:
    """``trained``, ``finetuned`` or ``swap`` (see the module docstring)."""
    run = cfg.runs[row.run]
    b = row_backend(cfg, row)
    if b.name != run.backend.name or dict(b.params) != dict(run.backend.params):
        return "swap"
    return "finetuned" if run.init_from else "trained"


def task_overrides(cfg: MemoryConfig) -> list[str]:
    return dotlist(dict(cfg.task))


def check_memory_config(cfg: MemoryConfig) -> None:
    """Every message names the key and the bad value."""

    if not cfg.runs:
        raise ConfigError("runs: give at least one training run, e.g. runs.dense.backend.name=dense")
    if not cfg.rows:
        raise ConfigError("rows: give at least one row to score, e.g. {label: dense, run: dense}")
    task = load_task_config(None, task_overrides(cfg))
    if task.data.source != "shapeshots" or task.data.task not in MEMORY_TASKS:
        raise ConfigError(f"task.data.task: the memory benchmark scores ShapeShots stories of a kind in "
                          f"{list(MEMORY_TASKS)}; set task.data.task=recall or binding (got "
                          f"data.source={task.data.source!r}, data.task={task.data.task!r})")
    if task.data.shots < 2:
        raise ConfigError(f"task.data.shots: recall needs >= 2 shots, got {task.data.shots}")
    if task.data.task == "binding" and task.data.text_tokens < BINDING_CAPTION_TOKENS:
        raise ConfigError(f"task.data.text_tokens: binding captions ('entity <id>') need >= {BINDING_CAPTION_TOKENS} "
                          f"tokens per shot, or no caption says which entity returns; got {task.data.text_tokens}")
    try:
        shapes_config(task)
    except ValueError as exc:
        raise ConfigError(f"task.data: {exc}") from None
    for name, run in cfg.runs.items():
        if run.init_from is not None and run.init_from not in cfg.runs:
            raise ConfigError(f"runs.{name}.init_from: no run named {run.init_from!r} (runs: {sorted(cfg.runs)})")
        if run.steps is not None and run.steps < 1:
            raise ConfigError(f"runs.{name}.steps: must be >= 1 or null, got {run.steps}")
        _check(check_backend, run.backend, f"runs.{name}.")
    run_order(cfg)
    labels = [r.label for r in cfg.rows]
    for i, row in enumerate(cfg.rows):
        if not row.label:
            raise ConfigError(f"rows.{i}.label: every row needs a label")
        if labels.count(row.label) > 1:
            raise ConfigError(f"rows.{i}.label: {row.label!r} is used by more than one row")
        if row.run not in cfg.runs:
            raise ConfigError(f"rows.{i}.run: no run named {row.run!r} (runs: {sorted(cfg.runs)})")
        if row.backend is not None:
            _check(check_backend, row.backend, f"rows.{i}.")
    if cfg.reference not in labels:
        raise ConfigError(f"reference: no row labelled {cfg.reference!r} (rows: {labels})")
    e = cfg.eval
    for key, value, least in (("stories", e.stories, 2), ("steps", e.steps, 1), ("loss_stories", e.loss_stories, 1),
                              ("sheet_stories", e.sheet_stories, 0)):
        if value < least:
            raise ConfigError(f"eval.{key}: must be >= {least}, got {value}")
    if not e.loss_timesteps or not all(0 < t <= 1 for t in e.loss_timesteps):
        raise ConfigError(f"eval.loss_timesteps: give times in (0, 1] (1 is noise), got {list(e.loss_timesteps)}")


def _check(fn, backend: BackendConfig, prefix: str) -> None:
    try:
        fn(backend)
    except ConfigError as exc:
        raise ConfigError(prefix + str(exc)) from None
