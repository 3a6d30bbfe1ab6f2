"""``mocbench sweep``: run, submit or list a sweep (its parser: :mod:`mocbench.sweep.cli`)."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from mocbench.bench.store import ResultStore
from mocbench.errors import check_output_dir
from mocbench.sweep.estimate import cell_estimate
from mocbench.sweep.launchers import make_launcher
from mocbench.sweep.report import write_sweep_report
from mocbench.sweep.runner import plan_sweep, run_sweep
from mocbench.sweep.spec import expand, load_sweep


def cmd_sweep(args: argparse.Namespace) -> int:
    console = Console()
    cfg = load_sweep(args.config, args.overrides)
    if args.dry_run:
        return _dry_run(cfg, args, console)
    check_output_dir(cfg.out_path, "out_dir")
    if cfg.results_dir:
        check_output_dir(cfg.results_dir, "results_dir")
    store = run_sweep(cfg, launcher=args.launcher, wait=not args.no_wait, retry_failed=args.retry_failed,
                      reuse_foreign=args.reuse_foreign, progress=not args.no_progress,
                      log=lambda m: console.print(m, highlight=False, markup=False))
    cells = expand(cfg)
    rows = [store.rows[c.key] for c in cells if store.done(c.key)]
    failed = [r for r in rows if r.get("status") == "failed"]
    pending = len(cells) - len(rows)
    console.print(f"{len(rows)} of {len(cells)} cells in {store.path}: {len(rows) - len(failed)} ok, {len(failed)} failed"
                  + (f", {pending} not finished" if pending else ""), highlight=False)
    for r in failed:
        console.print(f"  [red]failed[/] {r.get('label')}: {r.get('reason')}", highlight=False)
    if args.no_wait:
        if pending:
            console.print("jobs are queued or running; re-run the same command without --no-wait to follow them "
                          "and write the report", highlight=False)
        return 0
    if not args.no_report:
        written = write_sweep_report(cfg)
        console.print("wrote " + ", ".join(map(str, written)), highlight=False)
    return 1 if (failed or pending) and args.strict else 0


def _dry_run(cfg, args, console) -> int:
    cells = expand(cfg)
    launcher = make_launcher(args.launcher, cfg)
    plan = plan_sweep(cfg, cells, ResultStore(f"{cfg.out_path}/results.csv"), launcher,
                      retry_failed=args.retry_failed, reuse_foreign=args.reuse_foreign)
    job_of = {c.key: job.name for job in plan.jobs for c in job.cells}
    rows = []
    for c in cells:
        est = cell_estimate(c)
        rows.append({"key": c.key, "ablations": ",".join(c.ablations), "cell": c.label, "backend": c.config.backend.name,
                     "stages": "+".join(c.config.stages), "state": plan.state[c.key], "job": job_of.get(c.key, "-"),
                     **est})
    resources = launcher.resources()
    jobs = [{"job": job.name, "cells": len(job.cells), "labels": ", ".join(c.label for c in job.cells),
             "waits_for": plan.waits.get(job.name) or "", "launcher": args.launcher, "resources": resources}
            for job in plan.jobs]
    if args.json:
        print(json.dumps({"cells": rows, "jobs": jobs}, indent=2, default=str))
        return 0
    for line in plan.notices:
        console.print(line, highlight=False, markup=False)
    stages = sorted({"+".join(c.config.stages) for c in cells})
    table = Table(title=f"sweep {cfg.name}: {len(cells)} cells, stages {', '.join(stages)}; analytic attention "
                        f"cost per forward (all layers) on the task layout and per call on the bench layout")
    cols = ["key", "ablations", "cell", "state", "tokens", "est_sparsity", "est_attn_gflops", "bench_tokens",
            "bench_est_sparsity", "bench_est_gflops"]
    for col in cols:
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*(f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "-")) for c in cols))
    console.print(table)
    jt = Table(title=f"{len(jobs)} job(s) to {'submit' if args.launcher == 'submitit' else 'run'} with --launcher "
                     f"{args.launcher} (group_by: {cfg.launcher.group_by})")
    for col in ("job", "cells", "labels", "waits for (shared training)", "resources"):
        jt.add_column(col, overflow="fold")
    for j in jobs:
        jt.add_row(j["job"], str(j["cells"]), j["labels"], j["waits_for"] or "-", j["resources"])
    console.print(jt)
    return 0
