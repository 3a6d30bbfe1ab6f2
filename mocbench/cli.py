"""The ``mocbench`` command line: list and plan backends, benchmark, train, sample, evaluate, sweep, report.

This module holds every subcommand's parser, ``backends``, ``plan`` and ``main``; the other commands live in
their packages (:data:`COMMANDS`) and are imported only when they run, so ``mocbench backends`` starts without
pandas, Lightning or diffusers. Every subcommand has ``--help``. Configs are YAML files plus ``key=value``
overrides. User errors (bad config, value, path or file) print one line on stderr naming the culprit and exit 2
(``mocbench --debug`` or ``MOCBENCH_DEBUG=1`` adds the traceback); internal bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from collections.abc import Callable

import torch
from rich.table import Table

from mocbench.blocks import check_block_shape
from mocbench.config import PlanConfig, add_config_arguments, load_config, plain
from mocbench.console import console
from mocbench.errors import DEBUG_ENV, debug_enabled, one_line, user_message
from mocbench.eval.cli import add_subcommands as add_eval_subcommands  # eval, paper
from mocbench.integrations.diffusers.cli import add_subcommands as add_model_subcommands  # bench-model, sample-model
from mocbench.memory.cli import add_subcommands as add_memory_subcommands  # memory
from mocbench.registry import backend_specs, get_backend
from mocbench.stats import AttentionStats
from mocbench.sweep.cli import add_subcommands as add_sweep_subcommands  # sweep
from mocbench.tasks.cli import add_subcommands as add_task_subcommands  # train, sample


def _fmt_flops(x: float) -> str:
    return f"{x:.3g}"


def _local_devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def cmd_backends(args: argparse.Namespace) -> int:
    devices = _local_devices()
    rows = []
    for spec in backend_specs():
        caps = spec.cls.default_capabilities
        reasons = caps.dependency_reasons()
        if not set(caps.devices) & set(devices) and not reasons:
            reasons.append(f"needs {' or '.join(caps.devices)}; this machine has {', '.join(devices)}")
        params = ", ".join(f.name for f in spec.param_fields()) or "-"
        rows.append({"name": spec.name, "family": spec.family, "available": not reasons,
                     "devices": ",".join(caps.devices), "params": params, "source": spec.source,
                     "reasons": reasons})
    impls = {spec.name: spec.cls.implementations(devices) for spec in backend_specs()}
    impls = {name: table for name, table in impls.items() if table}
    if args.json:
        print(json.dumps({"backends": rows, "implementations": impls}, indent=2))
        return 0
    table = Table(title=f"mocbench backends (devices here: {', '.join(devices)})")
    for col in ("name", "family", "available", "devices", "params", "reasons"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["name"], r["family"], "[green]yes[/]" if r["available"] else "[red]no[/]", r["devices"],
                      r["params"], "; ".join(r["reasons"]) or "-")
    console.print(table)
    for name, impl_rows in impls.items():
        itable = Table(title=f"{name} implementations (param impl=; 'auto' runs the first of its device's order "
                             "that supports the call)")
        for col in ("impl", "devices", "auto order", "available here", "measured", "what it is"):
            itable.add_column(col, overflow="fold")
        for r in impl_rows:
            here = ("[green]yes[/]" + (f" ({r['note']})" if r["note"] else "")) if r["available"] \
                else f"[red]no[/]: {'; '.join(r['reasons'])}"
            itable.add_row(r["impl"], r["devices"], r["auto_order"], here, r.get("measured", "-"), r["description"])
        console.print(itable)
    return 0


def _stats_row(label: str, s: AttentionStats) -> dict:
    return {"backend": label, "tokens": s.tokens, "chunks": s.num_chunks, "keys_per_query": s.mean_keys_per_query,
            "sparsity": s.sparsity, "block_shape": list(s.block_shape) if s.block_shape else None,
            "block_density": s.block_density,
            "attention_flops": s.attention_flops, "routing_flops": s.routing_flops,
            "pooling_flops": s.pooling_flops,
            "total_flops": s.total_flops, "dense_flops": s.dense_flops, "dense_over_total": s.flops_reduction}


def cmd_plan(args: argparse.Namespace) -> int:
    cfg = load_config(PlanConfig, args.config, args.overrides)
    layout = cfg.layout.build()
    block_shape = check_block_shape(tuple(plain(cfg.block_shape)))
    rows = []
    for name, params, label in cfg.compare_entries() + [(cfg.backend, dict(cfg.params), None)]:
        backend = get_backend(name, **params)
        stats = backend.estimate(layout, head_dim=cfg.head_dim, batch=cfg.batch, heads=cfg.heads,
                                 block_shape=block_shape)
        rows.append(_stats_row(label or backend.label, stats))
    if args.json:
        print(json.dumps({"layout": layout.describe(), "head_dim": cfg.head_dim, "rows": rows}, indent=2))
        return 0
    title = cfg.title or "Analytic attention cost (per layer, forward)"
    table = Table(title=f"{title}\n{_short_layout(layout)}, head_dim={cfg.head_dim}, batch={cfg.batch}, heads={cfg.heads}")
    bq, bk = block_shape
    for col in ("backend", "L", "chunks", "keys/query", "sparsity", f"block density ({bq}x{bk})", "attn FLOPs",
                "routing+pooling FLOPs", "total FLOPs", "dense FLOPs", "dense/total"):
        table.add_column(col, justify="left" if col == "backend" else "right", overflow="fold")
    for r in rows:
        density = "depends on routing" if r["block_density"] is None else f"{100 * r['block_density']:.1f}%"
        table.add_row(r["backend"], f"{r['tokens']:,}", str(r["chunks"] or "-"), f"{r['keys_per_query']:,.0f}",
                      f"{100 * r['sparsity']:.1f}%", density, _fmt_flops(r["attention_flops"]),
                      _fmt_flops(r["routing_flops"] + r["pooling_flops"]),
                      _fmt_flops(r["total_flops"]), _fmt_flops(r["dense_flops"]), f"{r['dense_over_total']:.2f}x")
    console.print(table)
    return 0


def _short_layout(layout) -> str:
    fr = layout.frames_per_shot
    frames = str(fr[0]) if len(set(fr)) == 1 else "/".join(map(str, fr))
    return (f"L={layout.num_tokens:,} tokens: {layout.num_shots} shot(s) x {frames} frames x "
            f"{layout.tokens_per_frame} tokens/frame + {layout.num_text_tokens} caption tokens")


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one line on stderr (exit 2), like every other user error."""

    def error(self, message: str):
        print(f"error: {self.prog}: {one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mocbench", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true",
                        help=f"show the full traceback of an error (also: {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("backends", help="list registered attention backends and whether they run here")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser(
        "plan", help="analytic pairs / sparsity / FLOPs of a backend on a layout (no tensors)",
        description="Analytic accounting (moc-spec §7) of a layout and backend from a YAML config and/or "
                    "key=value overrides, e.g.: mocbench plan layout.shots=8 layout.frames=24 "
                    "layout.tokens_per_frame=936 layout.text_tokens=128 backend=moc params.top_k=5 "
                    "params.chunking=tokens:1280 head_dim=128",
    )
    add_config_arguments(p, "YAML config (see configs/plan/); optional")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser(
        "bench", help="validate and time backends over a sweep of workloads into a resumable result store",
        description="Run a benchmark sweep (see configs/bench/): every backend x workload cell is skipped (with "
                    "reasons), validated against the float64 masked reference, then timed; one row per cell is "
                    "written atomically, and a re-run skips finished cells. Example: mocbench bench "
                    "configs/bench/cpu_quick.yaml timing.repeats=3 'workloads.0.shots=[1,2]'",
    )
    add_config_arguments(p, "YAML sweep config (see configs/bench/)")
    p.add_argument("--out", help="result store CSV (default: the config's output, else runs/NAME/results.csv)")
    p.add_argument("--retry-failed", action="store_true", help="re-measure cells whose row says failed")
    p.add_argument("--max-memory", metavar="GIB", help="memory budget of a cell in GiB (default: free CUDA memory, "
                   "or MemAvailable on CPU); a cell estimated above it is recorded skipped, nothing allocated")
    p.add_argument("--retry-skipped", action="store_true",
                   help="re-measure cells whose row says skipped (e.g. after installing a missing package)")
    p.add_argument("--reuse-foreign", action="store_true",
                   help="keep finished rows measured in another environment (code, device, torch or threads "
                        "differ) instead of re-measuring them; reports mark them")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "report", help="tables (Markdown, LaTeX, CSV) and figures (PNG, PDF) from result stores",
        description="Write tables/, figures/, env.json and report.md from one or more result stores.",
    )
    p.add_argument("stores", nargs="+", help="result store CSV file(s) written by mocbench bench")
    p.add_argument("--out", help="output directory (default: the first store's directory)")
    p.add_argument("--reference", default="dense", help="backend label speed-ups are relative to (default dense)")
    p.add_argument("--no-figures", action="store_true", help="tables only")
    p.add_argument("--quiet", action="store_true", help="list the files written; do not print the tables")
    p.add_argument("--table", choices=("paper1", "paper2", "ablation"),
                   help="paper-style quality table from `mocbench eval` rows (single-/multi-shot), or the "
                        "ablation tables and figures of a `mocbench sweep` store, instead")
    p.add_argument("--figure", choices=("routing",),
                   help="routing: shot-to-shot routing heatmaps from routing.json files of `mocbench sweep`")
    add_task_subcommands(sub)
    add_eval_subcommands(sub)
    add_sweep_subcommands(sub)
    add_memory_subcommands(sub)
    add_model_subcommands(sub)
    return parser


# What runs each subcommand: a function of this module, or "module:function" imported when the command runs.
# The one place mocbench imports its own modules lazily (tests/test_imports.py allows no other): parsers are
# cheap to build, while the commands need pandas, Lightning, diffusers, ... (`mocbench backends` stays quick).
COMMANDS: dict[str, Callable[[argparse.Namespace], int] | str] = {
    "backends": cmd_backends,
    "plan": cmd_plan,
    "bench": "mocbench.bench.commands:cmd_bench",
    "report": "mocbench.bench.commands:cmd_report",
    "train": "mocbench.tasks.commands:cmd_train",
    "sample": "mocbench.tasks.commands:cmd_sample",
    "eval": "mocbench.eval.commands:cmd_eval",
    "paper": "mocbench.eval.commands:cmd_paper",
    "sweep": "mocbench.sweep.commands:cmd_sweep",
    "memory": "mocbench.memory.commands:cmd_memory",
    "bench-model": "mocbench.integrations.diffusers.commands:cmd_bench_model",
    "sample-model": "mocbench.integrations.diffusers.commands:cmd_sample_model",
}


def command(name: str) -> Callable[[argparse.Namespace], int]:
    """The function that runs subcommand ``name`` (its module imported now)."""
    target = COMMANDS[name]
    if callable(target):
        return target
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides after an option (``bench CFG --out X a=1``) are still overrides
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "config", None) and "=" in args.config:  # only overrides were given
        args.overrides = [args.config, *args.overrides]
        args.config = None
    try:
        return command(args.command)(args)
    except Exception as exc:  # sorted by user_message: a user mistake (exit 2) or a bug (re-raised)
        msg = user_message(exc)
        if msg is None:
            raise  # an internal bug: its traceback is the report
        if args.debug or debug_enabled():
            traceback.print_exc()
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
