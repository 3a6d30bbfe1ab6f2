"""``mocbench bench-model`` and ``mocbench sample-model``: backends inside real diffusers video models (their
parsers: :mod:`mocbench.integrations.diffusers.cli`). Neither imports diffusers until it runs: without it, a
command says how to install it."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from mocbench.backend import dependency_problem
from mocbench.bench.resume import ResumePolicy
from mocbench.bench.store import load_table
from mocbench.bench.tables import fmt, model_table, status_table
from mocbench.integrations.diffusers.bench import load_bench_model_config, run_bench_model
from mocbench.integrations.diffusers.sample import load_sample_model_config, sample_model


def _console():
    return Console(width=None if sys.stdout.isatty() else 200)  # tables stay readable in logs


def _needs_diffusers(command: str) -> bool:
    missing = dependency_problem("diffusers")
    if missing:
        print(f"error: {command} needs diffusers ({missing}): pip install -e '.[diffusers]'", file=sys.stderr)
    return bool(missing)


def cmd_bench_model(args: argparse.Namespace) -> int:
    console = _console()
    if _needs_diffusers("bench-model"):
        return 2
    overrides = [*args.overrides, *([f"model.weights={args.weights}"] if args.weights is not None else [])]
    cfg = load_bench_model_config(args.config, overrides)
    out = args.out or cfg.output_path
    policy = ResumePolicy(retry_failed=args.retry_failed, retry_skipped=args.retry_skipped,
                          reuse_foreign=args.reuse_foreign)
    run_bench_model(cfg, out=out, policy=policy, log=lambda m: console.print(m, highlight=False, markup=False))
    _print_table(console, out, cfg.name)
    return 0


def _print_table(console, path: str, name: str) -> None:
    df = load_table(path)
    df = df[df["config_name"] == name] if "config_name" in df.columns else df.iloc[:0]
    table = model_table(df)
    if not table.empty:
        first = table.iloc[0]
        shown = Table(title=f"{name}: {first['model']} ({first['dtype']}, {first['device']}), full transformer forward; "
                            f"speed-up vs the model's own attention ({path})")
        table = table.drop(columns=["config", "model", "dtype", "device"])
        for col in table.columns:
            shown.add_column(col, justify="left" if col == "backend" else "right")
        for row in table.itertuples(index=False):
            shown.add_row(*(fmt(v) for v in row))
        console.print(shown)
    bad = status_table(df)
    for row in bad.itertuples(index=False):
        console.print(f"{row.backend}: {row.status}: {row.reason}", highlight=False, markup=False)


def cmd_sample_model(args: argparse.Namespace) -> int:
    console = _console()
    if _needs_diffusers("sample-model"):
        return 2
    cfg = load_sample_model_config(args.config, args.overrides)
    sample_model(cfg, args.weights, args.out, log=lambda m: console.print(m, highlight=False, markup=False))
    console.print(f"wrote {cfg.count} sample(s) and metadata.json to {args.out}; compare backends with: mocbench eval "
                  f"{args.out} --reference DENSE_SAMPLES --evaluators fidelity,vbench_proxy", highlight=False)
    return 0
