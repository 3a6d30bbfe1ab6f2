"""The ``submitit`` launcher: each sweep job becomes a submitit job (``pip install 'mocbench[cluster]'``).

``launcher.cluster: slurm`` submits through ``sbatch`` (one job array per call, throttled by
``launcher.array_parallelism``) with the resources of the ``launcher:`` section; ``local`` runs each job as
a process on this machine (submitit's ``LocalExecutor``; for tests, every job sees the same GPUs) and
``debug`` runs them inside this process. Jobs write the sweep's store themselves. Every submitted job is
recorded in the job registry (``OUT/jobs.json``) before this process waits, so a re-run of the same command
submits only the cells that are neither finished nor held by a queued or running job, and waits for those.
A job that times out or is preempted on SLURM is requeued (``launcher.max_requeues``) and skips the cells
it finished before. Logs and pickles: ``launcher.folder`` (default ``OUT/submitit``).

A training that several jobs share and that is not done yet runs in the first of them (or in a job still
queued from an earlier call); on SLURM the others are submitted with ``--dependency=afterany:<that job>``,
so they do not hold GPUs while waiting on the training's lock (``local`` jobs just wait on the lock).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mocbench.bench.env import COMPARABLE
from mocbench.bench.store import ResultStore
from mocbench.errors import ConfigError
from mocbench.sweep.jobs import SweepJob
from mocbench.sweep.launchers.job_registry import JobRegistry, is_active, job_states
from mocbench.sweep.progress import Progress
from mocbench.sweep.spec import SweepConfig


def import_submitit():
    try:
        import submitit
    except ImportError:
        raise ConfigError("--launcher submitit needs the submitit package: pip install 'mocbench[cluster]' "
                          "(or pip install submitit)") from None
    return submitit


class SubmititLauncher:
    name = "submitit"

    def __init__(self, cfg: SweepConfig, log: Callable[[str], None] = print):
        self.lc = cfg.launcher
        self.out = Path(cfg.out_path)
        self.folder = Path(self.lc.folder) if self.lc.folder else self.out / "submitit"
        self.registry = JobRegistry(self.out)
        self.job_name = self.lc.job_name or f"mocbench-{cfg.name}"
        self.log = log
        self._debug_jobs: list[Any] = []
        self._handles: list[Any] = []

    @property
    def comparable(self) -> tuple[str, ...]:
        # On a cluster the jobs run on other machines: this process shares their code and torch, not their
        # device or thread count (those are recorded on every row, not compared).
        return COMPARABLE if self.lc.cluster in ("local", "debug") else ("env_code", "env_torch")

    def resources(self) -> str:
        lc = self.lc
        parts = [lc.cluster]
        parts += [f"{k}={getattr(lc, k)}" for k in ("partition", "account", "qos", "constraint") if getattr(lc, k)]
        parts += [f"{lc.gpus_per_node} GPU", f"{lc.cpus_per_task} CPU"]
        parts += [f"{lc.mem_gb:g} GB"] if lc.mem_gb else []
        parts += [f"{lc.timeout_min} min"]
        parts += [f"--{k.replace('_', '-')}={v}" for k, v in lc.slurm_additional_parameters.items()]
        return ", ".join(parts)

    def parameters(self) -> dict[str, Any]:
        """submitit's ``update_parameters`` arguments (generic ones, and ``slurm_*`` / ``local_*``)."""
        lc = self.lc
        params = {"name": self.job_name, "timeout_min": lc.timeout_min, "nodes": 1, "tasks_per_node": 1,
                  "cpus_per_task": lc.cpus_per_task, "gpus_per_node": lc.gpus_per_node, "mem_gb": lc.mem_gb,
                  "slurm_partition": lc.partition, "slurm_account": lc.account, "slurm_qos": lc.qos,
                  "slurm_constraint": lc.constraint, "slurm_array_parallelism": lc.array_parallelism,
                  "slurm_additional_parameters": dict(lc.slurm_additional_parameters) or None,
                  "slurm_setup": list(lc.setup) or None, "local_setup": list(lc.setup) or None}
        return {k: v for k, v in params.items() if v is not None}

    def executor(self):
        submitit = import_submitit()
        if self.lc.cluster == "slurm" and shutil.which("sbatch") is None:
            raise ConfigError("launcher.cluster=slurm but sbatch is not on PATH: run this on a SLURM login node, or "
                              "use launcher.cluster=local (a process per job on this machine) to try a sweep out")
        executor = submitit.AutoExecutor(folder=self.folder, cluster=self.lc.cluster,
                                         slurm_max_num_timeout=self.lc.max_requeues)
        executor.update_parameters(**self.parameters())
        return executor

    def start(self, jobs: list[SweepJob], waits: dict[str, str | None]) -> list[str]:
        """Submit ``jobs``: first those that wait for nothing, then, per job they wait for, the others."""
        if not jobs:
            return []
        executor = self.executor()
        first = [j for j in jobs if waits.get(j.name) is None]
        ids = self._submit(executor, first, None)
        id_of = {j.name: i for j, i in zip(first, ids)}
        after: dict[str, list[SweepJob]] = {}
        for job in jobs:
            if waits.get(job.name) is not None:
                after.setdefault(id_of.get(waits[job.name], waits[job.name]), []).append(job)
        for job_id, group in after.items():
            ids += self._submit(executor, group, job_id)
        return ids

    def _submit(self, executor, jobs: list[SweepJob], after: str | None) -> list[str]:
        if not jobs:
            return []
        extra = dict(self.lc.slurm_additional_parameters)
        if after is not None:  # and any dependency of the user's own (comma: both must hold)
            extra["dependency"] = ",".join(filter(None, [str(extra.get("dependency", "")), f"afterany:{after}"]))
        executor.update_parameters(slurm_additional_parameters=extra)  # a dict always: replaces the last one
        handles = executor.submit_array(list(jobs))
        now = time.time()
        self.registry.add([{"job_id": h.job_id, "cluster": self.lc.cluster, "name": job.name, "keys": job.keys,
                            "training": job.training, "after": after, "folder": str(self.folder),
                            "submitted_at": now, "log": str(h.paths.stderr)} for job, h in zip(jobs, handles)])
        self._handles += handles
        if self.lc.cluster == "debug":
            self._debug_jobs += handles
        for job, h in zip(jobs, handles):
            self.log(f"submitted job {h.job_id} ({job.name}: {len(job.cells)} cell(s)"
                     + (f", after job {after}" if after else "") + f"); log {h.paths.stderr}")
        return [h.job_id for h in handles]

    def wait(self, progress: Progress) -> list[str]:
        """Follow every unfinished registered job (submitted now or before) until it ends."""
        for handle in self._debug_jobs:  # debug: the jobs run here, now
            handle.result()
        try:
            return self._follow(progress)
        except KeyboardInterrupt:
            progress.log("stopped following the jobs; they keep running (scancel to stop them): re-run the same "
                         "command to follow them again")
            raise

    def _follow(self, progress: Progress) -> list[str]:
        store = ResultStore(self.out / "results.csv")
        watched = {e["job_id"]: e for e in self.registry.entries() if not e.get("state")}
        ended: dict[str, str] = {}
        while True:
            live = [e for jid, e in watched.items() if jid not in ended]
            if self.lc.cluster == "local":  # reap the controller processes that ended (no zombies)
                for h in self._handles:
                    h.done()
            states = job_states(live)
            ended.update({e["job_id"]: states[e["job_id"]] for e in live if not is_active(e, states[e["job_id"]])})
            store.refresh()
            running = sum(not store.done(k) for e in live if e["job_id"] not in ended for k in e["keys"])
            progress.poll(store.rows, running)
            if len(ended) == len(watched):
                break
            time.sleep(self.lc.poll_seconds)
        self.registry.record_states(ended)
        notes = []
        for jid, entry in watched.items():
            missing = [k for k in entry["keys"] if not store.done(k)]
            if missing:
                notes.append(f"job {jid} ({entry['name']}, {ended[jid]}) did not finish {len(missing)} cell(s) "
                             f"({', '.join(progress.labels.get(k, k) for k in missing)}); its log: "
                             f"{entry.get('log', self.folder)}; re-run the same command to resubmit them (finished "
                             "stages and training checkpoints are kept)")
        return notes
