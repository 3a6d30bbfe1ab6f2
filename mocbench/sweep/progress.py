"""Progress of a running sweep: cells done / in jobs / failed of the total, with an ETA (rich), or log lines.

Launchers report finished rows either as they produce them (:meth:`Progress.finished`, in-process) or by
polling the store (:meth:`Progress.poll`: a row counts once its ``finished_at`` differs from the one seen
when the sweep was planned, so rows written by jobs in other processes or on other machines are seen too).
"""

from __future__ import annotations

from collections.abc import Callable

from mocbench.bench.store import FINISHED


class Progress:
    def __init__(self, enabled: bool, total: int, done: int, failed: int, seen: dict[str, str],
                 labels: dict[str, str], log: Callable[[str], None] = print):
        self.done, self.failed, self.running, self.total = done, failed, 0, total
        self.seen, self.labels, self._log = dict(seen), labels, log
        self.bar = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self.bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
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
        else:
            self._log(msg)

    def finished(self, row: dict) -> None:
        """A cell's row was written (once per cell and sweep run; later calls for the same row are ignored)."""
        key = row.get("key", "")
        if key in self.seen and self.seen[key] == row.get("finished_at", ""):
            return
        self.seen[key] = row.get("finished_at", "")
        self.done += 1
        self.failed += row.get("status") == "failed"
        self.update(advance=1)
        if row.get("status") == "failed":
            self.log(f"cell {self.labels.get(key, key)} failed: {row.get('reason', '')}")

    def poll(self, rows: dict[str, dict], running: int) -> None:
        """Count the rows of ``rows`` (the store, re-read) finished since the sweep was planned."""
        for key in self.labels:
            row = rows.get(key)
            if row is not None and row.get("status") in FINISHED:
                self.finished(row)
        self.running = running
        self.update()
