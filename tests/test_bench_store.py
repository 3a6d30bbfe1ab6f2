"""ResultStore + runner: atomic rows, resume after a crash or SIGKILL without re-measuring, skipped reasons."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mocbench.bench import ResultStore, load_bench_config, run_bench
from mocbench.bench.config import expand_cells

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "backends=[{name: dense}, {name: moc, params: {top_k: 1, chunking: frame}}, {name: shot_local}, {name: xformers}]",
    "workloads=[{name: tiny, shots: [1, 2], frames: [2], tokens_per_frame: 4, text_tokens: 2, heads: 1, head_dim: 8}]",
    "timing.warmup=0", "timing.repeats=2", "timing.min_repeat_ms=0",
]


def tiny_cfg(out: Path, extra=()):
    return load_bench_config(None, [*TINY, f"output={out}", *extra])


def read_rows(path: Path) -> dict:
    with open(path, newline="") as f:
        return {r["key"]: r for r in csv.DictReader(f)}


class Stop(Exception):
    pass


def test_store_rewrites_atomically_and_reloads(tmp_path):
    store = ResultStore(tmp_path / "r.csv")
    store.add({"key": "a", "status": "ok", "total_ms": 1.5, "extra_col": "x"})
    store.add({"key": "b", "status": "failed", "reason": "boom, with a comma\nand a newline"})
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "no temp file may be left behind"
    again = ResultStore(tmp_path / "r.csv")
    assert again.rows["b"]["reason"] == "boom, with a comma\nand a newline"
    assert again.done("a") and again.done("b") and not again.done("b", retry_failed=True) and not again.done("c")
    with pytest.raises(ValueError, match="key"):
        store.add({"status": "ok"})


def test_interrupted_run_resumes_without_remeasuring(tmp_path):
    out = tmp_path / "r.csv"
    cfg = tiny_cfg(out)
    n_cells = len(expand_cells(cfg))

    seen = []

    def stop_after_three(cell, row):
        seen.append(cell.key)
        if len(seen) == 3:
            raise Stop
    with pytest.raises(Stop):
        run_bench(cfg, progress=False, on_cell_done=stop_after_three)
    before = read_rows(out)
    assert len(before) == 3

    measured = []
    run_bench(cfg, progress=False, on_cell_done=lambda c, r: measured.append(c.key))
    after = read_rows(out)
    assert len(after) == n_cells and not set(measured) & set(before), "finished cells must not be re-measured"
    assert all(after[k] == before[k] for k in before), "finished rows must stay byte-identical"
    assert run_bench(cfg, progress=False, on_cell_done=lambda c, r: pytest.fail("re-measured")) is not None

    fresh = tmp_path / "fresh.csv"
    run_bench(tiny_cfg(fresh), progress=False)
    cols = ["key", "status", "reason", "label", "tokens", "pairs", "total_flops", "est_total_flops"]
    strip = lambda rows: sorted(tuple(r[c] for c in cols) for r in rows.values())
    assert strip(after) == strip(read_rows(fresh)), "resumed table must equal an uninterrupted run's"


def test_sigkill_mid_run_loses_no_finished_cell(tmp_path):
    out = tmp_path / "r.csv"
    args = [sys.executable, "-m", "mocbench.cli", "bench", "--no-progress", *TINY, f"output={out}",
            "timing.repeats=40", "timing.min_repeat_ms=5"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and len(read_rows(out)) >= 1:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = read_rows(out)  # must parse: the file is always complete
    assert 1 <= len(before) < len(expand_cells(tiny_cfg(out))), "the kill must land mid-run"
    measured = []
    run_bench(tiny_cfg(out, ["timing.repeats=40", "timing.min_repeat_ms=5"]), progress=False,
              on_cell_done=lambda c, r: measured.append(c.key))
    after = read_rows(out)
    assert not set(measured) & set(before) and all(after[k] == before[k] for k in before)
    assert all(r["status"] in ("ok", "skipped") for r in after.values())


def test_unavailable_backend_is_a_skipped_row_with_reasons(tmp_path):
    out = tmp_path / "r.csv"
    run_bench(tiny_cfg(out), progress=False)
    rows = read_rows(out).values()
    xf = [r for r in rows if r["backend"] == "xformers"]
    assert xf and all(r["status"] == "skipped" and "not supported" in r["reason"] for r in xf)
    assert all(r["total_ms"] == "" for r in xf), "a skipped cell is never timed"
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["backend"] for r in ok} == {"dense", "moc", "shot_local"}
    for r in ok:
        assert float(r["total_ms"]) > 0 and float(r["validation_max_err"]) <= float(r["validation_tol"])
        assert r["env_torch"] and r["env_git_sha"] and "hostname" not in r


def test_cuda_cells_without_cuda_are_skipped_not_crashed(tmp_path, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "r.csv"
    run_bench(tiny_cfg(out, ["workloads.0.device=cuda", "workloads.0.dtype=bfloat16"]), progress=False)
    rows = read_rows(out).values()
    assert all(r["status"] == "skipped" and "CUDA is not available" in r["reason"] for r in rows)


def test_validation_failure_makes_the_cell_failed_and_untimed(tmp_path, monkeypatch):
    from mocbench.backends.dense import DenseSDPA
    real = DenseSDPA.forward
    monkeypatch.setattr(DenseSDPA, "forward", lambda self, q, k, v, plan: real(self, q, k, v, plan) * 1.01)
    out = tmp_path / "r.csv"
    run_bench(tiny_cfg(out), progress=False)
    dense = [r for r in read_rows(out).values() if r["backend"] == "dense"]
    assert dense and all(r["status"] == "failed" and "validation failed" in r["reason"] for r in dense)
    assert all(r["total_ms"] == "" for r in dense)


def test_bench_command_prints_the_table_and_resumes(tmp_path, capsys):
    from mocbench.cli import main
    out = tmp_path / "r.csv"
    assert main(["bench", "--no-progress", *TINY, f"output={out}"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "speed-up vs dense" in text and "xformers is not installed" in text and "8 measured now" in text
    assert main(["bench", "--no-progress", *TINY, f"output={out}"]) == 0
    assert "0 measured now" in " ".join(capsys.readouterr().out.split())


def test_forward_backward_pass_is_timed_and_counts_backward_flops(tmp_path):
    out = tmp_path / "r.csv"
    run_bench(tiny_cfg(out, ["workloads.0.passes=[fwd,fwd+bwd]", "workloads.0.shots=[2]"]), progress=False)
    rows = [r for r in read_rows(out).values() if r["backend"] in ("dense", "moc")]
    by = {(r["backend"], r["pass"]): r for r in rows}
    for name in ("dense", "moc"):
        fwd, both = by[(name, "fwd")], by[(name, "fwd+bwd")]
        assert both["status"] == "ok", both["reason"]
        assert float(both["timed_flops"]) == float(fwd["total_flops"]) + 2.5 * float(fwd["attention_flops"])
        assert float(both["validation_grad_max_err"]) <= float(both["validation_grad_tol"])  # gradients checked
        assert fwd.get("validation_grad_max_err", "") == ""  # forward cells check outputs only


def test_wrong_gradients_fail_the_fwd_bwd_cell_only(tmp_path, monkeypatch):
    """A backend whose forward is right but whose backward is wrong fails validation of fwd+bwd cells."""
    from mocbench.backends.dense import DenseSDPA

    class _ScaledGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return 1.5 * g

    real = DenseSDPA.forward
    monkeypatch.setattr(DenseSDPA, "forward", lambda self, q, k, v, plan: _ScaledGrad.apply(real(self, q, k, v, plan)))
    out = tmp_path / "r.csv"
    run_bench(tiny_cfg(out, ["workloads.0.passes=[fwd,fwd+bwd]", "workloads.0.shots=[2]"]), progress=False)
    dense = {r["pass"]: r for r in read_rows(out).values() if r["backend"] == "dense"}
    assert dense["fwd"]["status"] == "ok"
    assert dense["fwd+bwd"]["status"] == "failed" and "gradients differ" in dense["fwd+bwd"]["reason"]


def test_paired_reference_times_each_cell_side_by_side_with_dense(tmp_path):
    """timing.paired_reference: every non-reference cell records the reference's time measured interleaved
    with its own on the same inputs, and the report's speed-up is that paired ratio."""
    from mocbench.bench.report import build_tables
    from mocbench.bench.store import load_table

    out = tmp_path / "r.csv"
    run_bench(tiny_cfg(out, ["timing.paired_reference=true", "workloads.0.shots=[2]",
                             "backends=[{name: dense}, {name: moc, params: {top_k: 1, chunking: frame}}]"]),
              progress=False)
    rows = {r["backend"]: r for r in read_rows(out).values()}
    moc, dense = rows["moc"], rows["dense"]
    assert float(moc["paired_reference_ms"]) > 0 and float(moc["paired_speedup"]) > 0
    assert float(moc["paired_speedup_iqr"]) >= 0 and dense["paired_speedup"] == ""
    full = build_tables(load_table(out))["latency"]
    assert float(full.loc[full["backend"].str.startswith("moc"), "speed-up"].iloc[0]) == float(moc["paired_speedup"])


def test_paired_reference_needs_the_reference_among_the_backends(tmp_path):
    from mocbench.config import ConfigError

    with pytest.raises(ConfigError, match="timing.paired_reference needs the reference 'dense'"):
        tiny_cfg(tmp_path / "r.csv", ["timing.paired_reference=true", "backends=[{name: shot_local}]"])
