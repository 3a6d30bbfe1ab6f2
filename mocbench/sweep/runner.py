"""Run a sweep: every cell's stages in order, one result row per cell, resumable.

Sequential on CPU (and on one GPU). With several CUDA devices the parent starts one worker
process per device (``CUDA_VISIBLE_DEVICES=i``, cells ``i::n``); workers write each cell's row to
``OUT/cells/<key>/row.json`` and the parent merges them into the store as they appear.

Resume: the store (``OUT/results.csv``, a :class:`~mocbench.bench.store.ResultStore`) holds one
row per finished cell (``ok`` or ``failed`` with the error); finished stages of unfinished cells
have done-markers, so after a SIGKILL a re-run skips finished cells and stages and resumes
training from ``last.ckpt``. A failing cell is recorded and the sweep goes on.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from mocbench.bench.env import COMPARABLE
from mocbench.bench.resume import ResumePolicy, foreign_notices, needs_run
from mocbench.bench.store import ResultStore, atomic_write_text
from mocbench.sweep.spec import STAGES, SweepCell, SweepConfig, expand
from mocbench.sweep.stages import STAGE_FNS, Context


def base_row(cell: SweepCell, name: str) -> dict:
    b = cell.config.backend
    row = {"key": cell.key, "config_name": name, "backend": b.name, "params": json.dumps(b.params, sort_keys=True),
           "label": cell.label, "ablation": ";".join(cell.ablations), "axes": json.dumps(cell.axes, sort_keys=True),
           "stages": "+".join(s for s in STAGES if s in cell.config.stages)}
    for k, v in cell.axes.items():
        row[f"axis.{k}"] = v
    try:
        from mocbench.sweep.estimate import cell_estimate

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


def _environment() -> dict:
    import torch

    from mocbench.bench.env import environment

    try:
        return environment("cuda" if torch.cuda.is_available() else "cpu")
    except (RuntimeError, AssertionError):  # a CUDA query failed: record the host only
        return environment("cpu")


def _finish(row: dict, cdir: Path, t0: float) -> dict:
    row.update(_environment())
    row.update(finished_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               cell_seconds=round(time.perf_counter() - t0, 1))
    atomic_write_text(cdir / "row.json", json.dumps(row, default=str))
    return row


class _Display:
    """Rich live progress: cells done / running / failed and an ETA (or plain log lines)."""

    def __init__(self, enabled: bool, total: int, done: int, failed: int):
        self.done, self.failed, self.running, self.total = done, failed, 0, total
        self.bar = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), transient=False)
            self.task = self.bar.add_task("", total=total, completed=done)
        self.note = ""
        self.update()

    def __enter__(self):
        if self.bar:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.__exit__(*exc)

    def update(self, note: str | None = None, advance: int = 0) -> None:
        self.note = self.note if note is None else note
        if self.bar:
            desc = (f"sweep: done {self.done} | running {self.running} | failed {self.failed} "
                    f"of {self.total}  {self.note}")
            self.bar.update(self.task, description=desc[:110], advance=advance)

    def log(self, msg: str) -> None:
        if self.bar:
            self.bar.console.print(msg, highlight=False, markup=False)
            self.update(note=msg[-60:])


def run_sweep(cfg: SweepConfig, *, retry_failed: bool = False, reuse_foreign: bool = False, progress: bool = True,
              stage_fns: dict | None = None, worker: tuple[int, int] | None = None, argv: list[str] | None = None,
              log=print) -> ResultStore:
    """Run every unfinished cell of ``cfg``; returns the store (``OUT/results.csv``).

    A finished row measured in another environment (code, device, torch or threads; see
    :mod:`mocbench.bench.resume`) is run again with its own stage markers cleared, unless
    ``reuse_foreign``; shared training runs (``OUT/train``, ``OUT/finetune``) are reused either way."""
    import torch

    cells = expand(cfg)
    out = Path(cfg.out_path)
    store = ResultStore(out / "results.csv")
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    policy = ResumePolicy(retry_failed=retry_failed, reuse_foreign=reuse_foreign)
    env = {k: v for k, v in _environment().items() if k in COMPARABLE}
    for line in foreign_notices(store, [c.key for c in cells], policy, lambda key: env):
        log(line)
    todo = [c for c in cells if needs_run(store, c.key, policy, env)]
    for cell in todo:  # a foreign row's per-cell stages are measured again, not read back from their markers
        if store.done(cell.key, retry_failed=retry_failed):
            for marker in (out / "cells" / cell.key / "stages").glob("*.json"):
                marker.unlink()
    if worker is not None:  # a GPU worker: its slice, rows into row.json only
        i, n = worker
        ctx = Context(out, cfg.name, log=log)
        for cell in todo[i::n]:
            run_cell(cell, ctx, stage_fns)
        return store
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    failed = sum(1 for c in cells if store.rows.get(c.key, {}).get("status") == "failed" and c not in todo)
    with _Display(progress, len(cells), len(cells) - len(todo), failed) as disp:
        if n_gpu > 1 and argv is not None and len(todo) > 1:  # pragma: no cover (needs several GPUs)
            _run_parallel(todo, store, out, n_gpu, argv, disp)
        else:
            ctx = Context(out, cfg.name, log=disp.log if progress else log)
            for cell in todo:
                disp.running = 1
                disp.update(note=cell.label)
                row = run_cell(cell, ctx, stage_fns)
                store.add(row)
                disp.running = 0
                disp.done += 1
                disp.failed += row["status"] == "failed"
                disp.update(advance=1)
                if row["status"] == "failed":
                    (disp.log if progress else log)(f"cell {cell.label} failed: {row['reason']}")
    return store


def _run_parallel(todo, store, out, n_gpu, argv, disp) -> None:  # pragma: no cover (needs several GPUs)
    """One worker process per CUDA device; merge their row.json files into the store."""
    procs = []
    for i in range(n_gpu):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(i)}
        cmd = [sys.executable, "-c", "import sys; from mocbench.cli import main; sys.exit(main(sys.argv[1:]))", "sweep", *argv, "--worker", f"{i}/{n_gpu}", "--no-progress"]
        procs.append(subprocess.Popen(cmd, env=env))
    pending = {c.key: c for c in todo}
    disp.running = min(n_gpu, len(pending))
    while pending:
        for key in list(pending):
            f = out / "cells" / key / "row.json"
            if f.is_file():
                row = json.loads(f.read_text())
                if row.get("status") in ("ok", "failed"):
                    store.add(row)
                    del pending[key]
                    disp.done += 1
                    disp.failed += row["status"] == "failed"
                    disp.update(advance=1)
        alive = sum(p.poll() is None for p in procs)
        disp.running = min(alive, len(pending))
        disp.update()
        if not alive and pending:
            for key, cell in pending.items():
                store.add({**base_row(cell, store.rows.get(key, {}).get("config_name", "")), "status": "failed",
                           "reason": "worker exited without finishing this cell"})
            break
        time.sleep(2)
