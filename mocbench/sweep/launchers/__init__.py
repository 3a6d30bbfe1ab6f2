"""Launchers: how the jobs of a sweep run. One protocol, one module per launcher.

* ``local`` (:mod:`.local`): on this machine; in this process, or with several CUDA devices one job
  process per device at a time.
* ``submitit`` (:mod:`.submitit`): one submitit job per sweep job, on SLURM (``launcher.cluster: slurm``),
  as local processes (``local``, for tests) or in this process (``debug``); resources from ``launcher:``.

Whatever runs them, a job is a :class:`mocbench.sweep.jobs.SweepJob` writing its rows into the sweep's
store, and planning (which cells still need a run, which are queued in a job already) is the same: see
:func:`mocbench.sweep.runner.plan_sweep`. submitit is optional: only the submitit launcher's methods import it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from mocbench.errors import ConfigError
from mocbench.sweep.jobs import SweepJob
from mocbench.sweep.launcher_config import LAUNCHERS
from mocbench.sweep.launchers.submitit import SubmititLauncher
from mocbench.sweep.progress import Progress
from mocbench.sweep.spec import SweepConfig

__all__ = ["LAUNCHERS", "Launcher", "make_launcher"]


class Launcher(Protocol):
    name: str
    # environment fields (mocbench.bench.env.COMPARABLE) the planning process shares with the jobs it starts:
    # a finished row differing in one of them is measured again (see mocbench.bench.resume)
    comparable: tuple[str, ...]

    def resources(self) -> str:
        """What each job gets, in a few words (``--dry-run``)."""

    def start(self, jobs: list[SweepJob], waits: dict[str, str | None]) -> list[str]:
        """Submit ``jobs`` (or get them ready to run); the job ids. ``waits``: per job name, the job (name
        here, or id of a queued one) that runs the pending training it shares (:func:`~mocbench.sweep.jobs.waits_for`)."""

    def wait(self, progress: Progress) -> list[str]:
        """Run or watch the started jobs (and, for submitit, every job still queued from an earlier call)
        until they end; one line per job that ended without finishing all its cells."""


def make_launcher(name: str, cfg: SweepConfig, log: Callable[[str], None] = print) -> Launcher:
    """The launcher ``name`` for sweep ``cfg`` (its ``launcher:`` section and output directory)."""
    if name == "local":
        # imported here: `python -m mocbench.sweep.launchers.local` is the job process's entry point, and a
        # module the package imported first would run twice there (runpy warns)
        from mocbench.sweep.launchers.local import LocalLauncher

        return LocalLauncher(Path(cfg.out_path), log=log)
    if name == "submitit":
        return SubmititLauncher(cfg, log=log)
    raise ConfigError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {name!r}")
