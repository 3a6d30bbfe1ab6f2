"""The stages of a sweep cell: ``train``, ``finetune``, ``sample``, ``eval``, ``bench``.

Each stage is ``fn(cell, ctx) -> dict``; the dict is saved as the stage's done-marker
(``OUT/cells/<key>/stages/<stage>.json``) and merged into the cell's result row. Shared work is
keyed by what it depends on and guarded by a file lock, so cells (and GPU workers) reuse it:
``OUT/train/<hash>`` (one training per distinct task config + train backend + seed, resumed from
``checkpoints/last.ckpt`` with ``resume=last`` after a kill), ``OUT/finetune/<hash>``,
``OUT/ref/<hash>`` (the fidelity reference's samples from the same weights, captions and seeds).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mocbench.bench.config import BackendEntry, BenchConfig, TimingConfig, WorkloadConfig, expand_cells
from mocbench.bench.env import local_environment
from mocbench.bench.runner import measure_cell
from mocbench.bench.store import ResultStore, atomic_write_text
from mocbench.config import BackendConfig, dotlist, stable_hash
from mocbench.eval.runner import EvalRequest, evaluate
from mocbench.eval.vbench_real import VBenchSettings
from mocbench.sweep.estimate import cell_estimate
from mocbench.sweep.routing import sample_with_routing
from mocbench.sweep.spec import STAGES, SweepCell
from mocbench.tasks.config import load_task_config
from mocbench.tasks.train import train

# eval-store columns that are bookkeeping, not metrics
_META = {"key", "config_hash", "config_name", "status", "reason", "backend", "label", "family", "params", "finished_at",
         "evaluator", "samples", "reference", "checkpoint", "set_hash", "layout", "device", "dtype", "impl"}


@dataclass
class Context:
    out: Path
    name: str = "sweep"
    log: Callable[[str], None] = lambda msg: None
    state: dict[str, Any] = field(default_factory=dict)  # per cell: checkpoint, samples dir, ...

    def cell_dir(self, cell: SweepCell) -> Path:
        return self.out / "cells" / cell.key


def short_hash(obj: Any) -> str:
    """The key of a shared run (training, fine-tuning, reference samples): :func:`mocbench.config.stable_hash`."""
    return stable_hash(obj)


@contextlib.contextmanager
def locked(directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def backend_overrides(b: BackendConfig) -> list[str]:
    return [f"backend.name={b.name}", *dotlist(b.params, "backend.params.")]


def run_dir(kind: str, task_config: str, overrides: list[str]) -> str:
    """``<kind>/<hash>``: where (under the sweep's out dir) the training run of these settings lives."""
    return f"{kind}/{short_hash({'task_config': task_config, 'overrides': overrides})}"


def _train_run(ctx: Context, kind: str, task_config: str, overrides: list[str], callbacks: list | None = None) -> dict:
    """Train once into ``<kind>/<hash>`` (a ``done.json`` marks it finished; a killed run resumes from
    ``last.ckpt``); ``callbacks``: extra Lightning callbacks (e.g. progress lines)."""
    d = ctx.out / run_dir(kind, task_config, overrides)
    with locked(d):
        done = d / "done.json"
        if done.is_file():
            return json.loads(done.read_text())
        last = d / "checkpoints" / "last.ckpt"
        extra = [f"out_dir={d}"] + (["resume=last"] if last.is_file() else [])
        cfg = load_task_config(task_config, [*overrides, *extra])
        ctx.log(f"{kind}: {d}" + (" (resuming from last.ckpt)" if last.is_file() else ""))
        t0 = time.perf_counter()
        _, _, final = train(cfg, callbacks=callbacks)
        info = {"checkpoint": str(final), f"{kind}_seconds": round(time.perf_counter() - t0, 1), f"{kind}_dir": str(d)}
        atomic_write_text(done, json.dumps(info))
        return info


def task_overrides(cell: SweepCell) -> list[str]:
    t = cell.config.train
    return [*dotlist(t.overrides), f"seed={cell.config.seed}"]


def _train_overrides(cell: SweepCell) -> list[str]:
    return [*task_overrides(cell), *backend_overrides(cell.config.train.backend or BackendConfig())]


def shared_training(cell: SweepCell) -> str | None:
    """The training run (``train/<hash>``) the cell's train stage uses; None when it has none
    (no train stage, or ``train.checkpoint``). Cells with the same one share it (and a sweep job)."""
    t = cell.config.train
    if "train" not in cell.config.stages or t.checkpoint:
        return None
    return run_dir("train", t.task_config, _train_overrides(cell))


def stage_train(cell: SweepCell, ctx: Context) -> dict:
    t = cell.config.train
    if t.checkpoint:
        return {"checkpoint": t.checkpoint}
    return _train_run(ctx, "train", t.task_config, _train_overrides(cell))


def stage_finetune(cell: SweepCell, ctx: Context) -> dict:
    t = cell.config.train
    base = ctx.state.get("checkpoint") or t.checkpoint
    ov = [*task_overrides(cell), *backend_overrides(cell.config.backend), *dotlist(t.finetune_overrides),
          f"init_from={base}"]
    return _train_run(ctx, "finetune", t.task_config, ov)


def _sample_set(ctx: Context, ckpt: str, backend: BackendConfig, out: Path, spec, routing: Path | None) -> dict:
    t0 = time.perf_counter()
    info = sample_with_routing(ckpt, out, overrides=backend_overrides(backend), num=spec.num, seed=spec.seed,
                               steps=spec.steps, routing_path=routing)
    seconds = time.perf_counter() - t0
    atomic_write_text(out / "timing.json", json.dumps({"seconds": seconds, "num": spec.num,
                                                       "threads": torch.get_num_threads(),
                                                       "what": "wall time of sampling (model load included)"}))
    row = {"sample_seconds": round(seconds, 2), "samples": str(out)}
    if info is not None:
        tot = info["total"]
        row.update(routing=str(routing), routed_sparsity=tot["sparsity"], mutual=tot["mutual"],
                   directed=tot["directed"], mutual_rate=tot["mutual_rate"],
                   cross_shot_fraction=tot["cross_shot_fraction"])
    return row


def reference_samples(cell: SweepCell, ctx: Context, ckpt: str) -> Path:
    s, ref = cell.config.sample, cell.config.eval.reference
    d = ctx.out / "ref" / short_hash({"ckpt": ckpt, "ref": asdict(ref), "num": s.num, "seed": s.seed,
                                      "steps": s.steps})
    with locked(d):
        if not (d / "timing.json").is_file():
            ctx.log(f"reference samples {ref.name} -> {d}")
            _sample_set(ctx, ckpt, ref, d, s, None)
    return d


def stage_sample(cell: SweepCell, ctx: Context) -> dict:
    ckpt = ctx.state["checkpoint"]
    d = ctx.cell_dir(cell) / "samples"
    routing = ctx.cell_dir(cell) / "routing.json" if cell.config.sample.record_routing else None
    return _sample_set(ctx, ckpt, cell.config.backend, d, cell.config.sample, routing)


def stage_eval(cell: SweepCell, ctx: Context) -> dict:
    samples = ctx.state.get("samples") or str(ctx.cell_dir(cell) / "samples")
    ref = reference_samples(cell, ctx, ctx.state["checkpoint"]) if "fidelity" in cell.config.eval.evaluators else None
    store = ctx.cell_dir(cell) / "eval.csv"
    vb = {k: (tuple(v) if k == "dimensions" else v) for k, v in cell.config.eval.vbench.items() if v is not None}
    evaluate(EvalRequest(samples, reference=str(ref) if ref else None, evaluators=tuple(cell.config.eval.evaluators),
                         store=str(store), config_name=ctx.name, val_num=cell.config.eval.val_num,
                         vbench=VBenchSettings(**vb)), log=ctx.log)
    out: dict[str, Any] = {}
    for row in ResultStore(store).rows.values():
        ev = row.get("evaluator", "")
        if row.get("status") != "ok":
            out[f"eval_{ev}_status"] = f"{row.get('status')}: {row.get('reason', '')}"[:200]
            continue
        for k, v in row.items():
            if k not in _META and not k.startswith("env_") and v not in ("", None):
                out[k] = v
    return out


def stage_bench(cell: SweepCell, ctx: Context) -> dict:
    b, be = cell.config.bench, cell.config.backend
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = BenchConfig(name=ctx.name, backends=[BackendEntry(name=be.name, params=dict(be.params))],
                      workloads=[WorkloadConfig(name="sweep", shots=[b.shots], frames=[b.frames], **b.geometry(),
                                                batch=b.batch, heads=b.heads, head_dim=b.head_dim, dtype=b.dtype,
                                                device=device, passes=list(b.passes))],
                      timing=TimingConfig(warmup=b.warmup, repeats=b.repeats,
                                          max_seconds_per_cell=b.max_seconds_per_cell))
    out: dict[str, Any] = {}
    for bc in expand_cells(cfg):
        row = measure_cell(bc, cfg)
        p = "bench_" if bc.pass_ == "fwd" else "bench_bwd_"
        out[p + "status"] = row["status"] + (f": {row['reason']}" if row.get("reason") else "")
        for k in ("prepare_ms", "forward_ms", "total_ms", "total_iqr_ms", "sparsity", "tokens", "total_flops"):
            if row.get(k) not in (None, ""):
                out[p + k] = row[k]
        if row["status"] == "failed":
            raise RuntimeError(f"bench: {row['reason']}")
    return out


STAGE_FNS: dict[str, Callable[[SweepCell, Context], dict]] = {
    "train": stage_train, "finetune": stage_finetune, "sample": stage_sample, "eval": stage_eval,
    "bench": stage_bench,
}


def base_row(cell: SweepCell, name: str) -> dict:
    b = cell.config.backend
    row = {"key": cell.key, "config_name": name, "backend": b.name, "params": json.dumps(b.params, sort_keys=True),
           "label": cell.label, "ablation": ";".join(cell.ablations), "axes": json.dumps(cell.axes, sort_keys=True),
           "stages": "+".join(s for s in STAGES if s in cell.config.stages)}
    for k, v in cell.axes.items():
        row[f"axis.{k}"] = v
    try:
        row.update(cell_estimate(cell))
    except Exception as exc:  # noqa: BLE001 -- an estimate is informative only
        row["est_error"] = f"{type(exc).__name__}: {exc}"[:200]
    return row


def run_cell(cell: SweepCell, ctx: Context, stage_fns: dict | None = None) -> dict:
    """All stages of ``cell`` (finished ones read from their markers); never raises on a stage error."""
    fns = {**STAGE_FNS, **(stage_fns or {})}
    cdir = ctx.cell_dir(cell)
    (cdir / "stages").mkdir(parents=True, exist_ok=True)
    atomic_write_text(cdir / "cell.json", json.dumps({"key": cell.key, "ablations": cell.ablations, "axes": cell.axes,
                                                     "label": cell.label}, default=str))
    row = base_row(cell, ctx.name)
    ctx.state = {}
    t0 = time.perf_counter()
    for stage in (s for s in STAGES if s in cell.config.stages):
        marker = cdir / "stages" / f"{stage}.json"
        if marker.is_file():
            result = json.loads(marker.read_text())
        else:
            ctx.log(f"[{cell.label}] {stage}")
            try:
                result = fns[stage](cell, ctx)
            except Exception as exc:  # noqa: BLE001 -- recorded, the sweep goes on
                atomic_write_text(cdir / "error.txt", traceback.format_exc())
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                row.update(status="failed", reason=f"{stage}: {type(exc).__name__}: {first}", failed_stage=stage)
                return _finish(row, cdir, t0)
            atomic_write_text(marker, json.dumps(result, default=str))
        ctx.state.update(result)
        row.update(result)
    row.update(status="ok", reason="")
    return _finish(row, cdir, t0)


def _finish(row: dict, cdir: Path, t0: float) -> dict:
    row.update(local_environment())
    row.update(finished_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               cell_seconds=round(time.perf_counter() - t0, 1))
    atomic_write_text(cdir / "row.json", json.dumps(row, default=str))
    return row
