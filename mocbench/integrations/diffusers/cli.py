"""``mocbench bench-model CONFIG [key=value ...]``: backends inside a real diffusers video transformer."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mocbench.config import add_config_arguments


def cmd_bench_model(args: argparse.Namespace) -> int:
    from rich.console import Console

    from mocbench.backend import dependency_problem

    console = Console(width=None if sys.stdout.isatty() else 150)  # the table stays readable in logs
    missing = dependency_problem("diffusers")
    if missing:
        console.print(f"error: bench-model needs diffusers ({missing}): pip install -e '.[diffusers]'",
                      highlight=False, markup=False)
        return 2
    from mocbench.integrations.diffusers.bench import load_bench_model_config, run_bench_model

    cfg = load_bench_model_config(args.config, args.overrides)
    run_bench_model(cfg, out=args.out, retry_failed=args.retry_failed,
                    log=lambda m: console.print(m, highlight=False, markup=False))
    _print_table(console, args.out or cfg.output_path, cfg.name)
    return 0


def _print_table(console, path: str, name: str) -> None:
    from rich.table import Table

    from mocbench.bench.store import read_rows
    from mocbench.integrations.diffusers.bench import OWN

    rows = [r for r in read_rows(Path(path)).values() if r.get("config_name") == name]
    own = next((float(r["model_ms"]) for r in rows if r.get("backend") == OWN and r.get("model_ms")), None)
    table = Table(title=f"{name}: full transformer forward; speed-up vs the model's own attention ({path})")
    for col in ("backend", "status", "L", "sparsity", "fwd ms", "IQR", "attn ms", "route ms", "speed-up",
                "valid. err"):
        table.add_column(col, justify="left" if col in ("backend", "status") else "right")
    for r in rows:
        ms = r.get("model_ms")
        speed = f"{own / float(ms):.2f}x" if ms and own else ""
        table.add_row(r.get("label", ""), r.get("status", "") if r.get("status") == "ok" else
                      f"{r.get('status')}: {r.get('reason', '')[:80]}", r.get("tokens", ""),
                      _fmt(r.get("sparsity"), "{:.3f}"),
                      _fmt(ms, "{:.0f}"), _fmt(r.get("model_iqr_ms"), "{:.0f}"),
                      _fmt(r.get("attention_ms"), "{:.0f}"), _fmt(r.get("routing_ms"), "{:.0f}"), speed,
                      _fmt(r.get("validation_max_err"), "{:.1e}"))
    console.print(table)


def _fmt(text: str | None, pattern: str) -> str:
    return pattern.format(float(text)) if text not in (None, "", "nan") else ""


def add_subcommands(sub) -> None:
    p = sub.add_parser(
        "bench-model", help="time backends inside a real diffusers video transformer (random weights)",
        description="Build a diffusers video transformer from an architecture config (configs/models/*.json; "
                    "random weights, nothing downloaded), validate every backend on a shrunken input (dense "
                    "against the model's own attention, every layer call against its own float64 reference), "
                    "then time the full forward per backend; one row per backend into the result store. "
                    "Needs the diffusers extra. Example: mocbench bench-model configs/models/cogvideox_cpu.yaml "
                    "model.num_layers=1",
    )
    add_config_arguments(p, "YAML bench-model config (see configs/models/)", optional=False)
    p.add_argument("--out", help="result store CSV (default: the config's output, else runs/NAME/results.csv)")
    p.add_argument("--retry-failed", action="store_true", help="re-measure backends whose row says failed")
    p.set_defaults(func=cmd_bench_model)
