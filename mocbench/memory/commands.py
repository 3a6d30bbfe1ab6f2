"""``mocbench memory`` (its parser: :mod:`mocbench.memory.cli`)."""

from __future__ import annotations

import argparse
import time

from rich.console import Console

from mocbench.bench.resume import ResumePolicy
from mocbench.memory.config import load_memory_config
from mocbench.memory.report import load_rows, summary_lines, write_report
from mocbench.memory.runner import GT_LABEL, ground_truth, run_memory
from mocbench.tasks.lightning_module import load_task


def cmd_memory(args: argparse.Namespace) -> int:
    console = Console(soft_wrap=True)  # long lines stay whole in a log file

    def log(message: str) -> None:
        console.print(message, highlight=False, markup=False)
        console.file.flush()  # progress lines reach a log file or a pipe as they happen, not in 8 KB blocks

    cfg = load_memory_config(args.config, args.overrides)
    out = args.out or cfg.output_path
    t0 = time.perf_counter()
    store = run_memory(cfg, out, policy=ResumePolicy(retry_failed=args.retry_failed, reuse_foreign=args.reuse_foreign),
                       log=log)
    truth = _truth(cfg, store, GT_LABEL)
    written = write_report(store.path, out, reference=cfg.reference, title=f"Memory benchmark: {cfg.name}",
                           sheet_stories=cfg.eval.sheet_stories, truth=truth)
    df = load_rows(store.path)
    log("")
    if not df.empty:
        first = df.iloc[0]
        log(f"Memory benchmark {cfg.name}: {int(first['stories'])} stories, {int(first['pairs'])} scored shots per row "
            f"(full table with scene recall, loss by shot and routing: {written[0]})")
        for line in summary_lines(df, cfg.reference):
            log("  " + line)
    failed = [r for r in store.rows.values() if r.get("status") == "failed"]
    for r in failed:
        console.print(f"[red]failed[/] {r.get('label')}: {r.get('reason')}", highlight=False)
    log(f"wrote {', '.join(map(str, written))} ({_minutes(time.perf_counter() - t0)} in this process)")
    return 1 if failed else 0


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _truth(cfg, store, gt_label: str):
    """Rendered ground truth of the first sampled stories (for the contact sheet); None without a scored row."""
    rows = [r for r in store.rows.values() if r.get("status") == "ok" and r.get("label") != gt_label]
    if not rows or cfg.eval.sheet_stories == 0:
        return None
    video, *_ = ground_truth(load_task(rows[0]["checkpoint"]), cfg, "sample", cfg.eval.sheet_stories)
    return ((video + 1) / 2).numpy()
