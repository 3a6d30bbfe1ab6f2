"""The sweep's job registry (``OUT/jobs.json``): which submitted job holds which cells, and its state.

``mocbench sweep --launcher submitit`` records every job it submits (id, cluster, submitit folder, cell
keys, time); a later ``mocbench sweep`` of the same config, with any launcher, reads it and does not run
again a cell whose job is still queued or running (:func:`active_jobs`). States come from submitit (SLURM:
``sacct``); for ``cluster: local`` the job id is the pid of submitit's controller process, alive or not.
Once a job is seen to have ended its final state is written into the entry, so it is not asked again.
Writes are atomic, under ``OUT/jobs.json.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from mocbench.bench.store import atomic_write_text
from mocbench.errors import ConfigError, path_error

# SLURM states of a job that may still run its cells (submitit's own list of incomplete states, and more)
ACTIVE = frozenset({"READY", "PENDING", "RUNNING", "REQUEUED", "COMPLETING", "PREEMPTED", "CONFIGURING",
                    "SUSPENDED", "RESIZING", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT"})
# sacct may not list a job in the first moments after sbatch: until then UNKNOWN counts as queued
UNKNOWN_GRACE_S = 600.0


class JobRegistry:
    def __init__(self, out: str | os.PathLike):
        self.path = Path(out) / "jobs.json"

    def entries(self) -> list[dict]:
        if not self.path.is_file():
            return []
        try:
            data = json.loads(self.path.read_text())
        except OSError as exc:
            raise path_error(exc, "job registry", self.path) from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"job registry {str(self.path)!r} is not valid JSON ({exc}); it lists the sweep's "
                              "submitted jobs: fix it, or delete it if none of them is still queued") from None
        if not isinstance(data, dict) or not isinstance(data.get("jobs"), list):
            raise ConfigError(f"job registry {str(self.path)!r} must be a JSON object with a 'jobs' list")
        return data["jobs"]

    def add(self, entries: list[dict]) -> None:
        with self._locked():
            self._write([*self.entries(), *entries])

    def record_states(self, states: dict[str, str]) -> None:
        """Write the final ``state`` of ended jobs (by job id) into their entries."""
        if not states:
            return
        with self._locked():
            jobs = self.entries()
            for entry in jobs:
                if entry["job_id"] in states:
                    entry["state"] = states[entry["job_id"]]
            self._write(jobs)

    def _write(self, jobs: list[dict]) -> None:
        atomic_write_text(self.path, json.dumps({"jobs": jobs}, indent=1) + "\n")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def job_states(entries: list[dict]) -> dict[str, str]:
    """``{job id: state now}``: a SLURM state word (``PENDING``, ``RUNNING``, ``COMPLETED``, ``TIMEOUT``, …,
    ``UNKNOWN``), or for local jobs ``RUNNING`` / ``FINISHED`` (returned) / ``ENDED`` (killed or crashed).
    An entry with a recorded final state keeps it; SLURM jobs are asked in one ``sacct`` call."""
    states, slurm = {}, []
    for entry in entries:
        cluster = entry["cluster"]
        if entry.get("state"):
            states[entry["job_id"]] = entry["state"]
        elif cluster == "debug":  # ran inside the process that submitted it
            states[entry["job_id"]] = "FINISHED"
        elif cluster == "local":
            states[entry["job_id"]] = _local_state(entry)
        elif cluster == "slurm":
            slurm.append(entry)
        else:
            raise ConfigError(f"job registry: job {entry['job_id']} has unknown cluster {cluster!r} "
                              f"(known: slurm, local, debug)")
    if slurm:
        import submitit

        jobs = [submitit.SlurmJob(folder=e["folder"], job_id=e["job_id"]) for e in slurm]  # registered, then
        states.update({job.job_id: (job.state.split() or ["UNKNOWN"])[0] for job in jobs})  # one sacct call
    return states


def _local_state(entry: dict) -> str:
    pid = int(entry["job_id"])
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            status = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            alive = status != "Z" and b"submitit" in (proc / "cmdline").read_bytes()  # not a reused pid
        except OSError:
            alive = False
    else:  # no /proc (macOS): is the pid there at all
        try:
            os.kill(pid, 0)
            alive = True
        except OSError:
            alive = False
    if alive:
        return "RUNNING"
    from submitit.core.utils import JobPaths

    return "FINISHED" if JobPaths(entry["folder"], entry["job_id"]).result_pickle.exists() else "ENDED"


def is_active(entry: dict, state: str, now: float | None = None) -> bool:
    if state in ACTIVE:
        return True
    age = (time.time() if now is None else now) - float(entry.get("submitted_at", 0))
    return state == "UNKNOWN" and age < UNKNOWN_GRACE_S


def active_jobs(registry: JobRegistry, states_of: Callable[[list[dict]], dict[str, str]] = job_states
                ) -> list[tuple[dict, str]]:
    """(entry, state) of every registered job that may still run its cells."""
    entries = [e for e in registry.entries() if not e.get("state")]  # a recorded state is a final one
    states = states_of(entries)
    return [(e, states[e["job_id"]]) for e in entries if is_active(e, states[e["job_id"]])]
