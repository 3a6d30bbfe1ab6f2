"""Sweep jobs: the unit every launcher runs, a list of cells run in order by one process.

``launcher.group_by: cell`` (the default) gives one job per cell; cells that share a training share it
through its lock, and on SLURM the jobs of cells whose shared training is not done yet wait for the job
that runs it (see :mod:`mocbench.sweep.launchers.submitit`). ``group_by: training`` puts the cells that
share a training into one job, which trains once and then runs them one after another.

A job writes each cell's row straight into the sweep's store (``OUT/results.csv``; the store merges many
writers under a lock). It skips a cell whose row was finished *after* the job was planned (its
``finished_at`` differs from ``seen``), so a job that is requeued (SLURM timeout or preemption, through
:meth:`SweepJob.checkpoint`) or submitted twice never redoes a finished cell; an unfinished cell resumes
from its stage markers and its training from ``last.ckpt``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mocbench.bench.store import FINISHED, ResultStore
from mocbench.sweep.spec import SweepCell
from mocbench.sweep.stages import Context, run_cell, shared_training


@dataclass
class SweepJob:
    name: str  # train-<hash> (cells sharing that training) or cell-<key>
    cells: list[SweepCell]
    out: str  # the sweep's output directory
    sweep_name: str
    threads: int | None = None  # torch CPU threads (the sweep's ``threads``)
    seen: dict[str, str] = field(default_factory=dict)  # key -> finished_at of its row when planned ("" none)
    stage_fns: dict | None = None  # tests: replacement stage functions
    training: str | None = None  # train/<hash>: the training run its cells share (None: none)

    @property
    def keys(self) -> list[str]:
        return [c.key for c in self.cells]

    def __call__(self) -> dict[str, str]:
        """The job's body as submitit runs it: ``{key: status}`` of the cells it ran."""
        return run_job(self)

    def checkpoint(self):
        """submitit calls this on timeout or preemption: requeue the same job (finished cells are skipped)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


def make_jobs(cells: list[SweepCell], *, out: str, sweep_name: str, threads: int | None, group_by: str,
              rows: dict[str, dict], stage_fns: dict | None = None) -> list[SweepJob]:
    """``cells`` (in config order) grouped into jobs, ordered by their first cell."""
    groups: dict[str, list[SweepCell]] = {}
    for cell in cells:
        training = shared_training(cell) if group_by == "training" else None
        name = training.replace("/", "-") if training else f"cell-{cell.key}"
        groups.setdefault(name, []).append(cell)
    return [SweepJob(name, group, out, sweep_name, threads,
                     {c.key: rows.get(c.key, {}).get("finished_at", "") for c in group}, stage_fns,
                     shared_training(group[0]))
            for name, group in groups.items()]


def waits_for(jobs: list[SweepJob], out: str | Path, running: dict[str, str]) -> dict[str, str | None]:
    """``{job name: what it must wait for}``: None, or what runs the not yet done training it shares: a job
    queued from an earlier call (``running``: training -> job id) or the first job of ``jobs`` that has it."""
    first: dict[str, str] = dict(running)
    waits: dict[str, str | None] = {}
    for job in jobs:
        t = job.training
        if t is None or (Path(out) / t / "done.json").is_file() or t not in first:
            waits[job.name] = None
            if t is not None:
                first.setdefault(t, job.name)
        else:
            waits[job.name] = first[t]
    return waits


def finished_since_planned(row: dict | None, seen: str) -> bool:
    """Whether ``row`` is a finished row written after planning (``seen``: its finished_at then)."""
    return row is not None and row.get("status") in FINISHED and row.get("finished_at", "") != seen


def run_job(job: SweepJob, log: Callable[[str], None] = print,
            on_row: Callable[[dict], None] | None = None) -> dict[str, str]:
    """Run the job's cells that are not finished since it was planned; each row goes into the store."""
    threads = torch.get_num_threads()
    if job.threads is not None:
        torch.set_num_threads(job.threads)
    try:
        out = Path(job.out)
        store = ResultStore(out / "results.csv")
        ctx = Context(out, job.sweep_name, log=log)
        done: dict[str, str] = {}
        for cell in job.cells:
            store.refresh()
            if finished_since_planned(store.rows.get(cell.key), job.seen.get(cell.key, "")):
                log(f"[{cell.label}] finished meanwhile (another job or an earlier attempt of this one); skipped")
                continue
            row = run_cell(cell, ctx, job.stage_fns)
            store.add(row)
            done[cell.key] = row["status"]
            if on_row is not None:
                on_row(row)
        return done
    finally:  # a job run inside another process (local launcher, debug executor) leaves its threads as found
        torch.set_num_threads(threads)
