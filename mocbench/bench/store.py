"""ResultStore: one CSV row per cell, safe for many writers, resumable, strict when read.

Every ``add`` takes an exclusive ``fcntl.flock`` on a sidecar lock file (``STORE.lock``), re-reads
the store, merges the row in by its key and writes the whole file to a temporary file in the same
directory, fsync'ed and moved over the store with ``os.replace``. So any number of processes (bench,
eval, sweep workers, jobs on a shared filesystem with working ``flock``) can write one store without
losing each other's rows, and a process killed at any moment (SIGKILL included) leaves either the
previous or the new complete file, never a torn one. Temporary files orphaned by a killed writer are
removed by the next writer (under the lock, nobody else can be writing one); the file's mode is kept.

Rows are keyed by the cell key (see :mod:`mocbench.bench.config`); a re-run asks
:meth:`ResultStore.done` and skips finished cells. Values are strings here; :func:`load_table` gives
pandas. A file that does not parse (an unclosed quote, a row with the wrong number of fields, a
non-numeric value in a numeric column) is an error naming the file and line, never a swallowed row.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from mocbench.errors import ConfigError, check_output_file, path_error

# The leading columns, in order; any other keys of a row follow alphabetically.
COLUMNS = (
    "key", "config_hash", "config_name", "status", "reason",
    "backend", "label", "family", "params",
    "workload", "shots", "frames", "tokens_per_frame", "text_tokens", "text_placement", "tokens", "layout",
    "batch", "heads", "head_dim", "dtype", "device", "pass", "impl",
    "validation_max_err", "validation_tol",
    "prepare_ms", "prepare_iqr_ms", "forward_ms", "forward_iqr_ms", "total_ms", "total_iqr_ms",
    "repeats", "inner", "peak_mem_mb", "mem_method", "est_mem_gib",
    "paired_reference_ms", "paired_reference_iqr_ms", "paired_speedup", "paired_speedup_iqr",
    "pairs", "sparsity", "block_density", "num_chunks", "attention_flops", "routing_flops", "pooling_flops", "total_flops",
    "dense_flops",
    "est_pairs", "est_sparsity", "est_block_density", "est_attention_flops", "est_total_flops", "timed_flops", "tflops",
    "finished_at",
)
FINISHED = ("ok", "skipped", "failed")
# Columns of COLUMNS that hold text; the others are numbers (or empty) and are checked when read.
TEXT_COLUMNS = frozenset({
    "key", "config_hash", "config_name", "status", "reason", "backend", "label", "family", "params",
    "workload", "text_placement", "layout", "dtype", "device", "pass", "impl", "mem_method", "finished_at",
})
# Timings can never be negative; a row that says otherwise was not written by the harness.
TIMING_COLUMNS = ("prepare_ms", "prepare_iqr_ms", "forward_ms", "forward_iqr_ms", "total_ms", "total_iqr_ms",
                  "paired_reference_ms", "paired_reference_iqr_ms", "paired_speedup", "paired_speedup_iqr")


class ResultStore:
    """A CSV file of result rows keyed by ``key``; ``add`` merges under a lock and persists atomically."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        _check_store_path(self.path)
        check_output_file(self.path, "result store")  # before anything is measured, not after
        self.rows: dict[str, dict[str, str]] = read_rows(self.path)

    def __len__(self) -> int:
        return len(self.rows)

    def refresh(self) -> None:
        """Re-read the file: rows other processes added since are seen (e.g. before deciding ``done``)."""
        self.rows = read_rows(self.path)

    def done(self, key: str, *, retry_failed: bool = False, retry_skipped: bool = False) -> bool:
        """Whether ``key`` has a finished row that a re-run keeps (failed/skipped rows can be retried)."""
        row = self.rows.get(key)
        if row is None or row.get("status") not in FINISHED:
            return False
        return not ((retry_failed and row["status"] == "failed") or (retry_skipped and row["status"] == "skipped"))

    def add(self, row: dict) -> None:
        """Insert or replace ``row`` (by its ``key``), keeping every row other writers added meanwhile."""
        self.add_many([row])

    def add_many(self, rows: Iterable[dict]) -> None:
        """Insert or replace several rows in one locked read-merge-write."""
        new = [{k: _cell(v) for k, v in row.items()} for row in rows]
        for row in new:
            if not row.get("key"):
                raise ValueError("a result row needs a non-empty 'key'")
        with self._locked():
            merged = read_rows(self.path)
            for row in new:
                merged[row["key"]] = row
            self.rows = merged
            self._write()

    def columns(self) -> list[str]:
        extra = sorted({k for r in self.rows.values() for k in r} - set(COLUMNS))
        return list(COLUMNS) + extra

    def _write(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns(), restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows.values())
        atomic_write_text(self.path, buf.getvalue())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise path_error(exc, "result store lock file") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _remove_orphan_temp_files(self.path)
            yield
        finally:
            os.close(fd)  # releases the lock


def _check_store_path(path: Path) -> None:
    """One clear error for a store path that can never work (a directory, or under a regular file)."""
    if path.is_dir():
        raise ConfigError(f"result store {str(path)!r} is a directory; give a .csv file path")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"result store {str(path)!r}: {str(parent)!r} is a file, not a directory")
            break


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    """The rows of the store at ``path`` by key ({} when it does not exist); strict about its format."""
    if not path.exists():
        return {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return _parse(f, path)
    except UnicodeDecodeError:
        raise ConfigError(f"result store {str(path)!r} is not a UTF-8 CSV text file") from None
    except OSError as exc:
        raise path_error(exc, "result store", path) from None


def _parse(f, path: Path) -> dict[str, dict[str, str]]:
    reader = csv.reader(f, strict=True)
    start = 1  # the line the record being read starts on
    try:
        header = next(reader, None)
        if header is None:
            return {}
        if "key" not in header:
            raise ConfigError(f"{path}:1: not a mocbench result store (no 'key' column in the header)")
        rows: dict[str, dict[str, str]] = {}
        start = reader.line_num + 1
        for fields in reader:
            if len(fields) != len(header):
                raise ConfigError(f"{path}:{start}: {len(fields)} fields where the header has {len(header)} "
                                  "(an unclosed quote or a stray comma?)")
            row = dict(zip(header, fields))
            _check_row(row, path, start)
            rows[row["key"]] = row
            start = reader.line_num + 1
    except csv.Error as exc:
        raise ConfigError(f"{path}:{start}: malformed CSV from this line on ({exc}; an unclosed quote?)") from None
    return rows


def _check_row(row: dict[str, str], path: Path, line: int) -> None:
    if not row["key"]:
        raise ConfigError(f"{path}:{line}: empty 'key'")
    status = row.get("status", "")
    if status and status not in (*FINISHED, "running"):
        raise ConfigError(f"{path}:{line}: status {status!r} is not one of {', '.join(FINISHED)}")
    for col in COLUMNS:
        text = row.get(col, "")
        if col in TEXT_COLUMNS or text in ("", "nan"):
            continue
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{path}:{line}: column {col!r} must be a number, got {text!r}") from None
        if col in TIMING_COLUMNS and not (value >= 0):
            raise ConfigError(f"{path}:{line}: column {col!r} must be >= 0, got {text!r}")


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # round-trips exactly; nan -> 'nan'
    return str(value)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _remove_orphan_temp_files(path: Path) -> None:
    """Temp files of writers killed mid-write (only called under the store's lock)."""
    try:
        for p in path.parent.glob(f"{_temp_prefix(path)}*.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()
    except OSError:
        pass


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never a partial one.

    The file keeps its permission bits (a new file gets the usual ``0o666 & ~umask``); the temporary
    file is removed on every path out of here except SIGKILL (then the next store writer removes it)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = stat.S_IMODE(os.stat(path).st_mode) if path.exists() else _default_mode()
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise path_error(exc, "output file", path) from None
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise path_error(exc, "output file", path) from None
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def load_table(paths: str | os.PathLike | Iterable[str | os.PathLike]):
    """The store(s) as one pandas DataFrame with numeric columns parsed (files checked as they are read)."""
    import pandas as pd

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    frames = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise ConfigError(f"result store {str(p)!r} does not exist")
        _check_store_path(p)
        rows = read_rows(p)
        frames.append(pd.DataFrame(list(rows.values()), dtype=str))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(COLUMNS))
    df = df.fillna("")
    for col in df.columns:
        if col in TEXT_COLUMNS or col.startswith("env_"):
            continue
        converted = pd.to_numeric(df[col].replace("", "nan"), errors="coerce")
        if col in COLUMNS or converted.notna().sum() == (~df[col].isin(["", "nan"])).sum():
            df[col] = converted  # known numeric columns were checked by read_rows; others only if all parse
    return df

