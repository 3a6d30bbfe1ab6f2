"""``mocbench sweep CONFIG [key=value ...] [--dry-run]``: run (or list) an ablation sweep."""

from __future__ import annotations

import argparse
import json

from mocbench.config import add_config_arguments
from mocbench.errors import check_output_dir


def cmd_sweep(args: argparse.Namespace) -> int:
    from rich.console import Console

    from mocbench.sweep.spec import expand, load_sweep

    console = Console()
    cfg = load_sweep(args.config, args.overrides)
    cells = expand(cfg)
    if args.dry_run:
        return _dry_run(cfg, cells, console, args.json)
    check_output_dir(cfg.out_path, "out_dir")
    if cfg.results_dir:
        check_output_dir(cfg.results_dir, "results_dir")
    from mocbench.sweep.report import write_sweep_report
    from mocbench.sweep.runner import run_sweep

    worker = tuple(int(x) for x in args.worker.split("/")) if args.worker else None
    argv = [args.config, *args.overrides] if args.config else list(args.overrides)
    store = run_sweep(cfg, retry_failed=args.retry_failed, reuse_foreign=args.reuse_foreign,
                      progress=not args.no_progress, worker=worker, argv=argv,
                      log=lambda m: console.print(m, highlight=False, markup=False))
    if worker is not None:
        return 0
    rows = list(store.rows.values())
    failed = [r for r in rows if r.get("status") == "failed"]
    console.print(f"{len(rows)} cells in {store.path}: {len(rows) - len(failed)} ok, {len(failed)} failed",
                  highlight=False)
    for r in failed:
        console.print(f"  [red]failed[/] {r.get('label')}: {r.get('reason')}", highlight=False)
    if not args.no_report:
        written = write_sweep_report(cfg)
        console.print("wrote " + ", ".join(map(str, written)), highlight=False)
    return 1 if failed and args.strict else 0


def _dry_run(cfg, cells, console, as_json: bool) -> int:
    from rich.table import Table

    from mocbench.sweep.estimate import cell_estimate

    rows = []
    for c in cells:
        est = cell_estimate(c)
        rows.append({"key": c.key, "ablations": ",".join(c.ablations), "cell": c.label, "backend": c.config.backend.name,
                     "stages": "+".join(c.config.stages), **est})
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    stages = sorted({"+".join(c.config.stages) for c in cells})
    table = Table(title=f"sweep {cfg.name}: {len(cells)} cells, stages {', '.join(stages)}; analytic attention "
                        f"cost per forward (all layers) on the task layout and per call on the bench layout")
    cols = ["key", "ablations", "cell", "tokens", "est_sparsity", "est_attn_gflops", "bench_tokens",
            "bench_est_sparsity", "bench_est_gflops"]
    for col in cols:
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*(f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "-")) for c in cols))
    console.print(table)
    return 0


def add_subcommands(sub) -> None:
    p = sub.add_parser(
        "sweep", help="ablation sweep from config: grid/zip axes over any keys, staged resumable cells",
        description="Run a sweep (see configs/sweep/): a base cell config plus grid (cartesian) and zip (parallel) "
                    "axes over dotted keys, optionally per named ablation. Each cell runs its stages (train, "
                    "finetune, sample, eval, bench) and writes one row into OUT/results.csv; a re-run finishes "
                    "only what is missing. Example: mocbench sweep configs/sweep/ablation_cpu.yaml --dry-run",
    )
    add_config_arguments(p, "YAML sweep config",
                         overrides_help="key=value overrides of the sweep config (OmegaConf dotlist)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their analytic cost; run nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: JSON instead of a table")
    p.add_argument("--retry-failed", action="store_true", help="re-run cells whose row says failed")
    p.add_argument("--reuse-foreign", action="store_true",
                   help="keep finished cells measured in another environment (code, device, torch or threads "
                        "differ) instead of running them again")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of the live display")
    p.add_argument("--no-report", action="store_true", help="do not write tables/figures at the end")
    p.add_argument("--strict", action="store_true", help="exit 1 if any cell failed")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # i/n: one GPU worker process (internal)
    p.set_defaults(func=cmd_sweep)
