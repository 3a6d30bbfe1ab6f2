"""``mocbench paper CONFIG``: regenerate a paper-style table end to end.

Steps (each resumable: finished steps are found on disk and skipped):
1. the checkpoint: ``scales.<scale>.checkpoint`` if given, else ``OUT/train/checkpoints/last.ckpt``
   if a previous run left one, else ``mocbench train`` of ``task_config`` (+ ``task_overrides``);
2. samples of every backend in ``backends`` from that checkpoint with identical captions and
   noise seeds (``OUT/samples/<slug>``), the sampling wall time in ``timing.json``;
3. ``mocbench eval`` of every sample set (fidelity against the first backend, the reference) into
   ``OUT/eval.csv``;
4. the table (``<table>.md/.tex/.csv``), a copy of the store and a contact sheet of ground truth
   vs the reference vs the first MoC backend, side by side, into ``results_dir`` (small files only).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from mocbench.config import BackendConfig, ConfigError, load_config
from mocbench.errors import check_output_dir, require_int
from mocbench.eval.paper_table import write_paper_table
from mocbench.eval.runner import EvalRequest, evaluate
from mocbench.eval.samples import SampleSet
from mocbench.eval.vbench_real import VBenchSettings
from mocbench.tasks.checkpoint import read_checkpoint
from mocbench.tasks.config import load_task_config
from mocbench.tasks.media import contact_sheet, stack_sheets, write_png
from mocbench.tasks.sample import sample_checkpoint
from mocbench.tasks.shapeshots import render_story, story_from_metadata
from mocbench.tasks.train import train


@dataclass
class ScaleConfig:
    task_config: str = "configs/task/quickstart_multishot.yaml"
    task_overrides: list[str] = field(default_factory=list)
    checkpoint: str | None = None  # use these weights instead of training
    out_dir: str = "runs/paper"
    results_dir: str | None = None  # committed outputs (tables, store copy, contact sheet)
    num: int = 8  # videos per backend
    seed: int = 0  # captions and noise (sample i uses noise seed seed + i)
    steps: int | None = None  # ODE steps (default: the checkpoint's sample.steps)
    val_num: int | None = None  # held-out videos for val_loss (default: data.val_size)
    sheet_samples: int = 2  # samples in the side-by-side contact sheet


@dataclass
class VBenchEntry:
    python: str | None = None
    cache_dir: str | None = None
    torch_home: str | None = None
    device: str = "cpu"
    dimensions: list[str] = field(default_factory=lambda: ["subject_consistency", "background_consistency",
                                                           "motion_smoothness", "dynamic_degree", "aesthetic_quality",
                                                           "imaging_quality", "temporal_flickering"])


@dataclass
class PaperConfig:
    name: str = "paper"
    table: str = "paper2"
    scale: str = "cpu"
    scales: dict[str, ScaleConfig] = field(default_factory=dict)
    backends: list[BackendConfig] = field(default_factory=list)
    evaluators: list[str] = field(default_factory=lambda: ["fidelity", "val_loss", "vbench_proxy", "memory", "cost",
                                                           "vbench"])
    vbench: VBenchEntry = field(default_factory=VBenchEntry)


def load_paper_config(path: str, overrides: list[str] | None = None) -> PaperConfig:
    cfg = load_config(PaperConfig, path, overrides)
    if cfg.table not in ("paper1", "paper2"):
        raise ConfigError(f"table must be paper1 or paper2, got {cfg.table!r}")
    if not cfg.backends:
        raise ConfigError("backends: list at least the dense reference")
    if not cfg.scales:
        raise ConfigError("scales: define at least one scale (e.g. cpu)")
    for name, sc in cfg.scales.items():
        for key in ("num", "sheet_samples", "steps", "val_num"):
            if getattr(sc, key) is not None:
                require_int(f"scales.{name}.{key}", getattr(sc, key), 0 if key == "sheet_samples" else 1)
    return cfg


def slug(entry: BackendConfig) -> str:
    params = "_".join(f"{k}{v}" for k, v in sorted(entry.params.items()))
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{entry.name}_{params}" if params else entry.name)


def _checkpoint(sc: ScaleConfig, log, key: str) -> str:
    if sc.checkpoint:
        read_checkpoint(sc.checkpoint, key)
        return sc.checkpoint
    last = Path(sc.out_dir) / "train" / "checkpoints" / "last.ckpt"
    if last.is_file():
        log(f"reusing {last}")
        return str(last)

    cfg = load_task_config(sc.task_config, [*sc.task_overrides, f"out_dir={Path(sc.out_dir) / 'train'}"])
    t0 = time.perf_counter()
    _, _, final = train(cfg)
    log(f"trained {final} in {time.perf_counter() - t0:.0f} s")
    return str(final)


def _sample(ckpt: str, entry: BackendConfig, out: Path, sc: ScaleConfig, log) -> None:
    meta = out / "metadata.json"
    if meta.is_file() and (out / "timing.json").is_file():
        m = json.loads(meta.read_text())
        if m.get("num") == sc.num and m.get("seed") == sc.seed and Path(m.get("checkpoint", "")) == Path(ckpt):
            log(f"samples {out} exist")
            return
    import torch

    overrides = [f"backend.name={entry.name}"] + [f"backend.params.{k}={v}" for k, v in entry.params.items()]
    t0 = time.perf_counter()
    sample_checkpoint(ckpt, out, overrides=overrides, num=sc.num, seed=sc.seed, steps=sc.steps)
    seconds = time.perf_counter() - t0
    (out / "timing.json").write_text(json.dumps({"seconds": seconds, "num": sc.num, "threads": torch.get_num_threads(),
                                                 "what": "wall time of mocbench sample (model load included)"}))
    log(f"sampled {entry.name} {entry.params} -> {out} in {seconds:.1f} s")


def run_paper(cfg: PaperConfig, scale: str | None = None, log=print) -> list[Path]:
    scale = scale or cfg.scale
    if scale not in cfg.scales:
        raise ConfigError(f"scale {scale!r} is not in the config; known: {sorted(cfg.scales)}")
    sc = cfg.scales[scale]
    check_output_dir(sc.out_dir, f"scales.{scale}.out_dir")
    if sc.results_dir:
        check_output_dir(sc.results_dir, f"scales.{scale}.results_dir")
    out = Path(sc.out_dir)
    ckpt = _checkpoint(sc, log, f"scales.{scale}.checkpoint")
    dirs = []
    for entry in cfg.backends:
        d = out / "samples" / slug(entry)
        _sample(ckpt, entry, d, sc, log)
        dirs.append(d)
    vb = VBenchSettings(**{k: v for k, v in vars(cfg.vbench).items() if v is not None and k != "dimensions"},
                       dimensions=tuple(cfg.vbench.dimensions))
    store = out / "eval.csv"
    for d in dirs:
        evaluate(EvalRequest(str(d), reference=str(dirs[0]), evaluators=tuple(cfg.evaluators), store=str(store),
                             config_name=f"{cfg.name}/{scale}", vbench=vb, val_num=sc.val_num), log=log)
    results = Path(sc.results_dir) if sc.results_dir else out
    written = write_paper_table(store, cfg.table, results, reference=_reference_label(dirs[0]))
    if results != out:
        shutil.copyfile(store, results / "eval.csv")
        written.append(results / "eval.csv")
    moc = next((d for d, e in zip(dirs, cfg.backends) if e.name == "moc"), dirs[-1])
    written.append(side_by_side(dirs[0], moc, results / "contact_sheet_dense_vs_moc.png", sc.sheet_samples))
    return written


def _reference_label(d: Path) -> str:
    return SampleSet.load(d).label


def side_by_side(reference: Path, other: Path, path: Path, samples: int = 2) -> Path:
    """PNG: per sample, one row per shot: ground truth | reference (dense) | other (MoC)."""
    import torch

    a, b = SampleSet.load(reference), SampleSet.load(other)
    sheets = []
    for i in range(min(samples, len(a))):
        gt = a.meta["samples"][i].get("ground_truth")
        vids = [torch.from_numpy(a.native(i)) * 2 - 1, torch.from_numpy(b.native(i)) * 2 - 1]
        if isinstance(gt, dict) and "cast" in gt:
            vids.insert(0, torch.from_numpy(render_story(story_from_metadata(gt))) * 2 - 1)
        sheets.append(contact_sheet(vids, scale=a.scale))
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_png(path, stack_sheets(sheets))
