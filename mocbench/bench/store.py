"""ResultStore: one CSV row per benchmark cell, rewritten atomically after every cell.

Each write goes to a temporary file in the same directory, is fsync'ed and then moved over
the store with ``os.replace``, so a process killed at any moment (SIGKILL included) leaves
either the previous or the new complete file, never a torn one. Rows are keyed by the
cell key (see :mod:`mocbench.bench.config`); a re-run asks :meth:`ResultStore.done` and
skips finished cells. Values are kept as strings here; :func:`load_table` gives pandas.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

# The leading columns, in order; any other keys of a row follow alphabetically.
COLUMNS = (
    "key", "config_hash", "config_name", "status", "reason",
    "backend", "label", "family", "params",
    "workload", "shots", "frames", "tokens_per_frame", "text_tokens", "text_placement", "tokens", "layout",
    "batch", "heads", "head_dim", "dtype", "device", "pass", "impl",
    "validation_max_err", "validation_tol",
    "prepare_ms", "prepare_iqr_ms", "forward_ms", "forward_iqr_ms", "total_ms", "total_iqr_ms",
    "repeats", "inner", "peak_mem_mb", "mem_method",
    "pairs", "sparsity", "num_chunks", "attention_flops", "routing_flops", "total_flops", "dense_flops",
    "est_pairs", "est_sparsity", "est_attention_flops", "est_total_flops", "timed_flops", "tflops",
    "finished_at",
)
FINISHED = ("ok", "skipped", "failed")


class ResultStore:
    """A CSV file of result rows keyed by ``key``; ``add`` persists atomically."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.rows: dict[str, dict[str, str]] = {}
        if self.path.exists():
            with open(self.path, newline="") as f:
                for row in csv.DictReader(f):
                    self.rows[row["key"]] = row

    def __len__(self) -> int:
        return len(self.rows)

    def done(self, key: str, *, retry_failed: bool = False) -> bool:
        row = self.rows.get(key)
        if row is None or row.get("status") not in FINISHED:
            return False
        return not (retry_failed and row["status"] == "failed")

    def add(self, row: dict) -> None:
        """Insert or replace ``row`` (by its ``key``) and rewrite the file atomically."""
        if not row.get("key"):
            raise ValueError("a result row needs a non-empty 'key'")
        self.rows[row["key"]] = {k: _cell(v) for k, v in row.items()}
        self.write()

    def columns(self) -> list[str]:
        extra = sorted({k for r in self.rows.values() for k in r} - set(COLUMNS))
        return list(COLUMNS) + extra

    def write(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns(), restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows.values())
        atomic_write_text(self.path, buf.getvalue())


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # round-trips exactly; nan -> 'nan'
    return str(value)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def load_table(paths: str | os.PathLike | Iterable[str | os.PathLike]):
    """The store(s) as one pandas DataFrame with numeric columns parsed."""
    import pandas as pd

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    frames = [pd.read_csv(p, dtype=str, keep_default_na=False) for p in paths]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(COLUMNS))
    for col in df.columns:
        if col in _TEXT_COLUMNS or col.startswith("env_"):
            continue
        converted = pd.to_numeric(df[col].replace("", "nan"), errors="coerce")
        if converted.notna().any() or df[col].isin(["", "nan"]).all():
            df[col] = converted
    return df


_TEXT_COLUMNS = {"key", "config_hash", "config_name", "status", "reason", "backend", "label", "family", "params",
                 "workload", "text_placement", "layout", "dtype", "device", "pass", "impl", "mem_method",
                 "finished_at"}
