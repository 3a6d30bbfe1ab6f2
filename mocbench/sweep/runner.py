"""Run a sweep: plan which cells still need a run, group them into jobs, hand those to a launcher.

A cell runs its stages in order and yields one result row (:func:`mocbench.sweep.stages.run_cell`). Planning
(:func:`plan_sweep`) is the same for every launcher (:mod:`mocbench.sweep.launchers`): a cell runs
unless the store (``OUT/results.csv``) has its finished row (the resume policy of
:mod:`mocbench.bench.resume`: ``--retry-failed``, rows from another environment) or a job in the job
registry (``OUT/jobs.json``) still holds it; the rest are grouped into jobs (:mod:`mocbench.sweep.jobs`),
which write their rows into the store themselves. Finished stages of unfinished cells have done-markers,
so after a SIGKILL (of this process or of a job) a re-run skips finished cells and stages and resumes
training from ``last.ckpt``. A failing cell is recorded and the sweep goes on. Planning and submission
hold ``OUT/.lock``, so two concurrent ``mocbench sweep`` calls never start the same cell twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mocbench.bench.env import local_environment
from mocbench.bench.resume import ResumePolicy, foreign_notices, needs_run
from mocbench.bench.store import ResultStore
from mocbench.errors import ConfigError
from mocbench.sweep.jobs import SweepJob, make_jobs, waits_for
from mocbench.sweep.launchers import Launcher, make_launcher
from mocbench.sweep.launchers.job_registry import JobRegistry, active_jobs
from mocbench.sweep.progress import Progress
from mocbench.sweep.spec import SweepCell, SweepConfig, expand
from mocbench.sweep.stages import locked


@dataclass
class SweepPlan:
    cells: list[SweepCell]
    state: dict[str, str]  # key -> "done" | "to run" | "in job <id> (<STATE>)"
    jobs: list[SweepJob]  # the cells to run, grouped
    waits: dict[str, str | None]  # job name -> the job running the pending training it shares (jobs.waits_for)
    notices: list[str]  # one line per group of finished rows measured in another environment


def plan_sweep(cfg: SweepConfig, cells: list[SweepCell], store: ResultStore, launcher: Launcher, *,
               retry_failed: bool = False, reuse_foreign: bool = False, stage_fns: dict | None = None) -> SweepPlan:
    """Which cells run, in which jobs (reads the store and the job registry; changes nothing).

    A finished row is compared with this process's environment in the fields the launcher's jobs share
    with it (``launcher.comparable``): all of them locally, code and torch for jobs on a cluster."""
    policy = ResumePolicy(retry_failed=retry_failed, reuse_foreign=reuse_foreign)
    registry = JobRegistry(cfg.out_path)
    active = active_jobs(registry) if registry.path.is_file() else []
    held = {key: f"job {e['job_id']} ({state})" for e, state in active for key in e["keys"]}
    env = {k: v for k, v in local_environment().items() if k in launcher.comparable}
    if cfg.threads is not None and "env_threads" in env:  # what the jobs will run with
        env["env_threads"] = str(cfg.threads)
    notices = foreign_notices(store, [c.key for c in cells if c.key not in held], policy, lambda key: env)
    unfinished = [c for c in cells if needs_run(store, c.key, policy, env)]
    todo = [c for c in unfinished if c.key not in held]  # a job still queued or running will run the others
    state = {c.key: "done" for c in cells}
    state.update({c.key: f"in {held[c.key]}" if c.key in held else "to run" for c in unfinished})
    jobs = make_jobs(todo, out=cfg.out_path, sweep_name=cfg.name, threads=cfg.threads,
                     group_by=cfg.launcher.group_by, rows=store.rows, stage_fns=stage_fns)
    waits = waits_for(jobs, cfg.out_path, {e["training"]: e["job_id"] for e, _ in active if e.get("training")})
    return SweepPlan(cells, state, jobs, waits, notices)


def run_sweep(cfg: SweepConfig, *, launcher: str = "local", wait: bool = True, retry_failed: bool = False,
              reuse_foreign: bool = False, progress: bool = True, stage_fns: dict | None = None,
              log=print) -> ResultStore:
    """Run (or submit) every unfinished cell of ``cfg``; returns the store (``OUT/results.csv``).

    ``launcher``: ``local`` or ``submitit`` (:mod:`mocbench.sweep.launchers`). ``wait=False`` (submitit
    only) returns once the jobs are submitted. A finished row measured in another environment is run
    again with its own stage markers cleared, unless ``reuse_foreign``; shared training runs
    (``OUT/train``, ``OUT/finetune``) are reused either way."""
    threads = torch.get_num_threads()
    try:
        return _run_sweep(cfg, launcher, wait, retry_failed, reuse_foreign, progress, stage_fns, log)
    finally:  # the sweep's `threads` (set for planning and in-process jobs) does not outlive it
        torch.set_num_threads(threads)


def _run_sweep(cfg, launcher, wait, retry_failed, reuse_foreign, progress, stage_fns, log) -> ResultStore:
    cells = expand(cfg)
    out = Path(cfg.out_path)
    store = ResultStore(out / "results.csv")
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    launch = make_launcher(launcher, cfg, log=log)
    if not wait and (launch.name == "local" or cfg.launcher.cluster == "debug"):
        raise ConfigError("--no-wait needs --launcher submitit with launcher.cluster slurm or local (the local "
                          "launcher and the debug cluster run the jobs in this process)")
    with locked(out):  # plan and submit: no other `mocbench sweep` of this out dir in between
        store.refresh()
        plan = plan_sweep(cfg, cells, store, launch, retry_failed=retry_failed, reuse_foreign=reuse_foreign,
                          stage_fns=stage_fns)
        for line in plan.notices:
            log(line)
        for job in plan.jobs:  # a foreign row's stages are measured again, not read back from their markers
            for cell in job.cells:
                if store.done(cell.key, retry_failed=retry_failed):
                    for marker in (out / "cells" / cell.key / "stages").glob("*.json"):
                        marker.unlink()
        seen = {k: r.get("finished_at", "") for k, r in store.rows.items()}
        launch.start(plan.jobs, plan.waits)
    held = sorted({s for s in plan.state.values() if s.startswith("in job")})
    if held:
        n = sum(s.startswith("in job") for s in plan.state.values())
        log(f"{n} cell(s) held by queued or running jobs, not started again: " + ", ".join(h[3:] for h in held))
    if wait:
        done = [k for k, s in plan.state.items() if s == "done"]
        failed = sum(store.rows[k].get("status") == "failed" for k in done)
        with Progress(progress, len(cells), len(done), failed, seen, {c.key: c.label for c in cells},
                      log=log) as prog:
            notes = launch.wait(prog)
        for line in notes:
            log(line)
    store.refresh()
    return store
