"""Paper-style tables from evaluation rows: one row per backend, quality next to cost.

``paper1`` (single-shot) and ``paper2`` (multi-shot) share the columns of the sparse-video-
attention papers: the six VBench dimensions (subject / background consistency, motion smoothness,
dynamic degree, aesthetic and imaging quality), then fidelity to dense (PSNR / SSIM), held-out loss,
sparsity, attention FLOPs and sampling latency. Long-range memory is not a column: a table's few
samples per backend give too few returning shots for an interval that says anything, so
``mocbench memory`` measures it on 128+ stories (the ``memory`` evaluator rows of ``mocbench eval``,
the same position-free recall, stay in the store).

A VBench cell shows the real VBench score when its row is ``ok``; otherwise the weight-free proxy
marked with a dagger; otherwise "n/a" with the reason (missing weights) in the footnote. A best
value is bold only when its row carries a 95 % interval for it (``<column>_lo`` / ``<column>_hi``)
that excludes the runner-up's value, so nothing noise could explain is bold (the dense reference is
left out of the fidelity columns; sparsity is a setting and is never bold). Rows that reuse the
reference's checkpoint with another attention backend swapped in at sampling time are marked
§ and named in the footnote. The footnote names the environment and every proxied column.
Pure functions of the store; nothing is measured here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mocbench.bench.store import atomic_write_text, load_table
from mocbench.bench.tables import fmt, latex_escape
from mocbench.errors import require_file

DAGGER = "†"
SWAP = "§"  # a backend swapped into the reference's weights without training


@dataclass(frozen=True)
class Column:
    title: str
    higher_is_better: bool | None  # None: never bold
    real: str | None = None  # vbench dimension
    proxy: str | None = None  # column of the vbench_proxy row
    value: str | None = None  # column of another evaluator's row
    evaluator: str | None = None


VBENCH_COLUMNS = (
    Column("subject consistency", True, real="subject_consistency"),
    Column("background consistency", True, real="background_consistency"),
    Column("motion smoothness", True, real="motion_smoothness", proxy="motion_smoothness"),
    Column("dynamic degree", True, real="dynamic_degree", proxy="dynamic_degree"),
    Column("aesthetic quality", True, real="aesthetic_quality"),
    Column("imaging quality", True, real="imaging_quality", proxy="imaging_quality"),
    Column("temporal flickering", True, real="temporal_flickering", proxy="temporal_flickering"),
)
FIDELITY = (Column("PSNR (dB)", True, value="psnr", evaluator="fidelity"),
            Column("SSIM", True, value="ssim", evaluator="fidelity"))
COST = (Column("val loss", False, value="val_loss", evaluator="val_loss"),
        Column("sparsity", None, value="sparsity", evaluator="cost"),
        Column("attn GFLOPs", False, value="attn_gflops", evaluator="cost"),
        Column("latency (s/video)", False, value="latency_s_per_video", evaluator="cost"))
TABLES = {
    "paper1": ("Table 1: single-shot video generation", VBENCH_COLUMNS + FIDELITY + COST),
    "paper2": ("Table 2: multi-shot video generation", VBENCH_COLUMNS + FIDELITY + COST),
}


def _order(label: str, backend: str) -> tuple:
    rank = {"dense": 0, "moc": 1}.get(backend, 2)
    return (rank, backend, label)


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"] if "status" in df else df


def _last(rows: pd.DataFrame, column: str) -> float:
    if rows.empty or column not in rows:
        return math.nan
    vals = pd.to_numeric(rows[column], errors="coerce").dropna()
    return float(vals.iloc[-1]) if len(vals) else math.nan


def build_paper_table(df: pd.DataFrame, table: str, reference: str = "dense") -> dict:
    """``{"values", "intervals", "marks", "title", "notes", "swaps"}``: numeric table (backend rows x
    columns), per-cell 95 % intervals ``(lo, hi)`` where the store has them, per-cell marks (``"real"``,
    ``"proxy"``, ``""``), the labels of swapped rows and footnote lines."""
    if table not in TABLES:
        raise ValueError(f"--table must be one of {sorted(TABLES)}, got {table!r}")
    title, columns = TABLES[table]
    if "evaluator" not in df:
        raise ValueError("the store has no evaluation rows (column 'evaluator'); write them with `mocbench eval`")
    df = df[df["evaluator"].notna() & (df["evaluator"].astype(str) != "")]
    labels = sorted({(lbl, b) for lbl, b in zip(df["label"], df["backend"])}, key=lambda x: _order(*x))
    values, intervals, marks, notes_missing, proxied = {}, {}, {}, {}, set()
    for label, _backend in labels:
        rows = df[df["label"] == label]
        vrow, mrow, irow = {}, {}, {}
        for col in columns:
            v, mark = math.nan, ""
            if col.real:
                real = rows[(rows["evaluator"] == "vbench") & (rows.get("dimension") == col.real)]
                if not _ok(real).empty:
                    v, mark = _last(_ok(real), f"vbench_{col.real}"), "real"
                elif col.proxy:
                    v, mark = _last(_ok(rows[rows["evaluator"] == "vbench_proxy"]), col.proxy), "proxy"
                    if not math.isnan(v):
                        proxied.add(col.title)
                if math.isnan(v) and not real.empty and str(real["reason"].iloc[-1]):
                    notes_missing.setdefault(col.title, str(real["reason"].iloc[-1]))
            else:
                src = _ok(rows[rows["evaluator"] == col.evaluator])
                v = _last(src, col.value)
                irow[col.title] = (_last(src, f"{col.value}_lo"), _last(src, f"{col.value}_hi"))
            vrow[col.title], mrow[col.title] = v, (mark if not math.isnan(v) else "")
        values[label], marks[label], intervals[label] = vrow, mrow, irow
    frame = pd.DataFrame.from_dict(values, orient="index", columns=[c.title for c in columns])
    swaps = _swapped(df, reference)
    notes = _footnote(df, proxied, notes_missing, reference, swaps)
    return {"values": frame, "intervals": intervals, "marks": pd.DataFrame.from_dict(marks, orient="index"),
            "title": title, "columns": columns, "notes": notes, "reference": reference, "swaps": swaps}


def _swapped(df: pd.DataFrame, reference: str) -> list[str]:
    """Labels (other than ``reference``) whose samples come from the reference's checkpoint: their
    backend was swapped into weights trained with the reference's attention."""
    if "checkpoint" not in df:
        return []
    ckpt = lambda rows: {str(c) for c in rows["checkpoint"] if str(c) not in ("", "nan")}
    ref = ckpt(df[df["label"] == reference])
    return sorted({lbl for lbl in df["label"] if lbl != reference and ref and ckpt(df[df["label"] == lbl]) & ref})


def _footnote(df: pd.DataFrame, proxied: set, missing: dict, reference: str, swaps: list[str]) -> list[str]:
    env = {}
    for col in ("env_cpu", "env_gpu", "env_torch", "env_cuda", "env_python", "env_git_sha", "vbench_env"):
        if col in df:
            vals = sorted({str(v) for v in df[col] if str(v) not in ("", "nan")})
            if vals:
                env[col.removeprefix("env_")] = " / ".join(vals)
    notes = ["Environment: " + "; ".join(f"{k} {v}" for k, v in env.items())]
    notes.append(f"VBench columns without {DAGGER} are the real vbench package (custom_input, local weights).")
    if proxied:
        notes.append(f"{DAGGER} weight-free proxy, not VBench (mocbench/eval/vbench_proxy.py): "
                     + ", ".join(sorted(proxied)) + ". Temporal flickering uses VBench's own formula; dynamic degree"
                     " and motion smoothness use OpenCV Farneback flow instead of RAFT / AMT; imaging quality is"
                     " (100 - BRISQUE)/100 instead of MUSIQ.")
    for title, reason in missing.items():
        notes.append(f"{title}: real VBench not run: {reason}")
    notes.append(f"PSNR/SSIM: against the {reference} backend's samples from the same weights, captions and noise "
                 "(ref = the reference itself). Sparsity and attention GFLOPs: analytic, all layers, one forward "
                 "pass per sample; latency: wall time of sampling per video. Bold: a best value whose 95% "
                 "interval excludes the runner-up; without an interval nothing is bold.")
    if swaps:
        notes.append(f"{SWAP} swap: sampled with the {reference} checkpoint's weights and this attention backend "
                     f"swapped in without training ({', '.join(swaps)}); rows without {SWAP} are trained with "
                     "their own backend.")
    notes.append("Long-range memory is measured by `mocbench memory` (recall of shot 0's colours with chance "
                 "levels and intervals), not in this table.")
    return notes


def _best(table: dict) -> dict[str, str]:
    """``{column title: label}`` of the cells to bold: the best value of a column, only when its row's
    95 % interval for that column excludes the runner-up's value (a tie or no interval: no bold)."""
    vals: pd.DataFrame = table["values"]
    best = {}
    for col in table["columns"]:
        if col.higher_is_better is None:
            continue
        s = vals[col.title]
        if col.evaluator == "fidelity":
            s = s.drop(index=[table["reference"]], errors="ignore")
        s = s[s.map(lambda v: isinstance(v, float) and math.isfinite(v))]
        if len(s) < 2:
            continue
        ranked = s.sort_values(ascending=not col.higher_is_better)
        top, runner_up = ranked.index[0], float(ranked.iloc[1])
        lo, hi = table.get("intervals", {}).get(top, {}).get(col.title, (math.nan, math.nan))
        excludes = lo > runner_up if col.higher_is_better else hi < runner_up  # False when NaN
        if excludes:
            best[col.title] = top
    return best


def _cells(table: dict, bold: str) -> pd.DataFrame:
    vals, marks, best = table["values"], table["marks"], _best(table)
    out = {}
    for label, row in vals.iterrows():
        cells = {}
        for col in table["columns"]:
            v = row[col.title]
            if isinstance(v, float) and math.isnan(v):
                text = "n/a" if col.real else "-"
            elif isinstance(v, float) and math.isinf(v) and col.evaluator == "fidelity":
                text = "ref"
            else:
                text = fmt(float(v)) if not isinstance(v, str) else v
                if best.get(col.title) == label:
                    text = bold.format(text)
            if marks.loc[label].get(col.title) == "proxy":
                text += DAGGER
            cells[col.title] = text
        out[label] = cells
    frame = pd.DataFrame.from_dict(out, orient="index")
    frame.insert(0, "backend", [f"{lbl} {SWAP}" if lbl in table.get("swaps", []) else lbl for lbl in frame.index])
    return frame.reset_index(drop=True)


def to_markdown(table: dict) -> str:
    cells = _cells(table, "**{}**")
    head = "| " + " | ".join(cells.columns) + " |"
    rule = "| " + " | ".join("---" for _ in cells.columns) + " |"
    body = ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in cells.itertuples(index=False)]
    notes = [f"<sub>{n}</sub>  " for n in table["notes"]]
    return "\n".join([f"**{table['title']}**", "", head, rule, *body, "", *notes]) + "\n"


def to_latex(table: dict) -> str:
    cells = _cells(table, "\x00{}\x01")
    esc = lambda s: latex_escape(str(s)).replace("\x00", r"\textbf{").replace("\x01", "}").replace(
        DAGGER, r"$^\dagger$").replace(SWAP, r"\S{}")
    lines = [r"\begin{table*}[t]", r"\centering", r"\scriptsize", r"\setlength{\tabcolsep}{3pt}",
             rf"\begin{{tabular}}{{l{'r' * (len(cells.columns) - 1)}}}", r"\toprule",
             " & ".join(esc(c) for c in cells.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(v) for v in row) + r" \\" for row in cells.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}",
              rf"\caption{{{latex_escape(table['title'])}. " + " ".join(esc(n) for n in table["notes"]) + "}",
              r"\end{table*}"]
    return "\n".join(lines) + "\n"


def to_csv(table: dict) -> str:
    """Numbers unformatted, plus one ``<column> source`` column per VBench column (vbench / proxy)."""
    vals = table["values"].copy()
    for col in table["columns"]:
        if col.real:
            vals[f"{col.title} source"] = [{"real": "vbench", "proxy": "proxy"}.get(m, "")
                                           for m in table["marks"].reindex(vals.index)[col.title].fillna("")]
    vals.insert(0, "backend", vals.index)
    return vals.to_csv(index=False)


def write_paper_table(stores, table: str, out_dir: str | Path | None = None, reference: str = "dense") -> list[Path]:
    """Write ``{table}.md``, ``{table}.tex`` and ``{table}.csv``; returns the paths."""

    paths = [stores] if isinstance(stores, (str, Path)) else list(stores)
    for p in paths:
        require_file(p, "result store")
    built = build_paper_table(load_table(paths), table, reference)
    out = Path(out_dir) if out_dir else Path(paths[0]).parent
    written = []
    for ext, render in (("md", to_markdown), ("tex", to_latex), ("csv", to_csv)):
        path = out / f"{table}.{ext}"
        atomic_write_text(path, render(built))
        written.append(path)
    return written
