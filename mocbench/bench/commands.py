"""``mocbench bench`` and ``mocbench report`` (their parsers: :func:`mocbench.cli.build_parser`)."""

from __future__ import annotations

import argparse

import pandas as pd
from rich.table import Table

from mocbench.bench.config import load_bench_config
from mocbench.bench.report import build_tables, write_report
from mocbench.bench.resume import ResumePolicy
from mocbench.bench.runner import run_bench
from mocbench.bench.store import load_table
from mocbench.bench.tables import CROSS_ENV_MARK, CROSS_ENV_NOTE, fmt
from mocbench.console import console
from mocbench.errors import check_output_dir
from mocbench.eval.paper_table import write_paper_table
from mocbench.sweep.report import cmd_report_sweep


def _print_frame(title: str, frame) -> None:
    table = Table(title=title)
    for col in frame.columns:
        table.add_column(str(col), justify="right" if pd.api.types.is_numeric_dtype(frame[col]) else "left", overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(*(fmt(v) for v in row))
    console.print(table)


def _print_bench_summary(stores: str | list[str], reference: str) -> None:
    built = build_tables(load_table(stores), reference)
    if not built["latency_pivot"].empty:
        _print_frame(f"total latency per layer, ms (speed-up vs {reference})", built["latency_pivot"])
        if built["latency_pivot"].astype(str).apply(lambda col: col.str.endswith(CROSS_ENV_MARK)).any().any():
            console.print(CROSS_ENV_NOTE, highlight=False)
    if not built["status"].empty:
        _print_frame("skipped / failed cells", built["status"])


def cmd_bench(args: argparse.Namespace) -> int:
    overrides = [*args.overrides, *([f"max_memory_gib={args.max_memory}"] if args.max_memory is not None else [])]
    cfg = load_bench_config(args.config, overrides)
    out = args.out or cfg.output_path
    measured = []
    policy = ResumePolicy(retry_failed=args.retry_failed, retry_skipped=args.retry_skipped,
                          reuse_foreign=args.reuse_foreign)
    store = run_bench(cfg, output=out, policy=policy, progress=not args.no_progress,
                      on_cell_done=lambda cell, row: measured.append(cell.key),
                      log=lambda line: console.print(line, highlight=False, markup=False))
    counts = {}
    for row in store.rows.values():
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    _print_bench_summary(out, cfg.reference)
    console.print(f"result store: {out} ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}; "
                  f"{len(measured)} measured now, the rest resumed from the store); "
                  f"report: mocbench report {out}", highlight=False)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if args.out is not None:
        check_output_dir(args.out, "--out")
    if args.figure or args.table == "ablation":  # sweep outputs (mocbench.sweep.report)
        return cmd_report_sweep(args)
    if args.table:  # paper-style quality table from `mocbench eval` rows
        written = write_paper_table(args.stores, args.table, args.out, reference=args.reference)
        print(written[0].read_text())
        console.print("wrote " + ", ".join(map(str, written)), highlight=False)
        return 0
    written = write_report(args.stores, args.out, reference=args.reference, figures=not args.no_figures)
    if not args.quiet:
        _print_bench_summary(args.stores, args.reference)
    console.print(f"wrote {len(written)} files under {written[-1].parent}: "
                  + ", ".join(str(p.relative_to(written[-1].parent)) for p in written), highlight=False)
    return 0
