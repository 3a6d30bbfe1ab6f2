"""The ``local`` launcher: a sweep's jobs on this machine.

Without CUDA, or with one device, the jobs run in this process, one after another. With several CUDA
devices it keeps one job process per device busy (``CUDA_VISIBLE_DEVICES=i``; the next job starts on a
device as soon as its last one ends); each job process writes its rows into the store itself and this
process follows the store. Its jobs end with the command, so none is recorded in the job registry.

Job process entry point: ``python -m mocbench.sweep.launchers.local JOBS.pkl INDEX``.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mocbench.bench.env import COMPARABLE
from mocbench.bench.store import ResultStore
from mocbench.sweep.jobs import SweepJob, run_job
from mocbench.sweep.progress import Progress


def _cuda_devices() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class LocalLauncher:
    name = "local"
    comparable = COMPARABLE  # the jobs run on this machine, with this code, torch and device

    def __init__(self, out: Path, log: Callable[[str], None] = print, poll_seconds: float = 2.0):
        self.out, self.log, self.poll_seconds = Path(out), log, poll_seconds
        self.devices = _cuda_devices()
        self.jobs: list[SweepJob] = []

    def resources(self) -> str:
        return f"one of {self.devices} CUDA devices (a process per job)" if self.devices > 1 else "this process"

    def start(self, jobs: list[SweepJob], waits: dict[str, str | None]) -> list[str]:
        self.jobs = list(jobs)  # in order: a job that waits for a training comes after the one running it
        return [f"local-{i}" for i in range(len(self.jobs))]

    def wait(self, progress: Progress) -> list[str]:
        if self.devices > 1 and len(self.jobs) > 1:
            return self._run_pool(progress)
        for job in self.jobs:
            progress.running = len(job.cells)
            progress.update(note=job.name)
            run_job(job, log=progress.log, on_row=progress.finished)
        progress.running = 0
        return []

    def _run_pool(self, progress: Progress) -> list[str]:
        """One job process per CUDA device at a time; rows are followed in the store."""
        path = self.out / "launcher" / f"local-{os.getpid()}-{time.time_ns()}.pkl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(self.jobs))  # read by the job processes started below
        store = ResultStore(self.out / "results.csv")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")  # device i of this process is ids[i] for a child
        ids = visible.split(",") if visible else [str(d) for d in range(self.devices)]
        queue = list(range(len(self.jobs)))
        running: dict[int, tuple[int, subprocess.Popen]] = {}  # device -> (job index, process)
        exits: dict[int, int] = {}  # job index -> exit code
        try:
            while queue or running:
                for device in range(self.devices):
                    if device not in running and queue:
                        i = queue.pop(0)
                        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ids[device]}
                        cmd = [sys.executable, "-m", "mocbench.sweep.launchers.local", str(path), str(i)]
                        running[device] = (i, subprocess.Popen(cmd, env=env))
                for device, (i, proc) in list(running.items()):
                    if proc.poll() is not None:
                        del running[device]
                        exits[i] = proc.returncode
                store.refresh()
                progress.poll(store.rows, sum(len(self.jobs[i].cells) for i, _ in running.values()))
                if queue or running:
                    time.sleep(self.poll_seconds)
        finally:
            path.unlink(missing_ok=True)
        notes = []
        for i, code in exits.items():
            missing = [c.label for c in self.jobs[i].cells if not store.done(c.key)]
            if code != 0 and missing:
                notes.append(f"job {self.jobs[i].name} exited with code {code} without finishing {len(missing)} "
                             f"cell(s) ({', '.join(missing)}); re-run the same command to run them (finished stages "
                             "are kept)")
        return notes


def main(argv: list[str]) -> int:
    """Run job ``INDEX`` of the pickled job list ``JOBS.pkl`` (the pool's job process)."""
    path, index = argv
    jobs = pickle.loads(Path(path).read_bytes())
    run_job(jobs[int(index)])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
