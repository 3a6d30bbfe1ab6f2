"""Sweep runner: rows per cell, resume after a simulated kill (nothing recomputed, identical table),
stage-level resume, failing cells recorded while the sweep goes on."""

from __future__ import annotations

import json

import pytest

from mocbench.bench.store import ResultStore
from mocbench.sweep.runner import run_sweep
from mocbench.sweep.spec import load_sweep

SPEC = """
name: t
out_dir: {out}
base:
  stages: [{stages}]
  backend: {{name: moc, params: {{top_k: 1, chunking: frame}}}}
  bench: {{shots: 2, frames: 2, tokens_per_frame: 8, text_tokens: 4, heads: 1, head_dim: 16, repeats: 1}}
grid: {{backend.params.top_k: [0, 1, 2], backend.params.causal: [true, false]}}
"""


class Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so the runner cannot record it."""


def _cfg(tmp_path, name="out", stages="bench"):
    p = tmp_path / f"{name}.yaml"
    p.write_text(SPEC.format(out=tmp_path / name, stages=stages))
    return load_sweep(str(p))


def _fake(calls, kill_at=None, fail_key=None):
    def fn(cell, ctx):
        calls.append(cell.key)
        if kill_at is not None and len(calls) == kill_at:
            raise Killed()
        if fail_key is not None and cell.config.backend.params["top_k"] == fail_key:
            raise ValueError(f"boom top_k={fail_key}")
        p = cell.config.backend.params
        return {"bench_total_ms": 1.0 + p["top_k"] + 0.5 * p["causal"], "metric": p["top_k"] * 10}
    return fn


def _table(store: ResultStore) -> list[dict]:
    drop = {"finished_at", "cell_seconds", "config_name"}
    rows = ResultStore(store.path).rows.values()  # as written to disk
    return sorted(({k: v for k, v in r.items() if k not in drop and v != ""} for r in rows), key=lambda r: r["key"])


def test_resume_after_kill_recomputes_nothing(tmp_path):
    cfg = _cfg(tmp_path)
    calls: list[str] = []
    with pytest.raises(Killed):
        run_sweep(cfg, progress=False, stage_fns={"bench": _fake(calls, kill_at=4)})
    assert len(ResultStore(tmp_path / "out" / "results.csv")) == 3  # 3 finished before the kill
    finished = set(calls[:3])
    again: list[str] = []
    store = run_sweep(cfg, progress=False, stage_fns={"bench": _fake(again)})
    assert len(again) == 3 and finished.isdisjoint(again)  # only the missing cells ran
    third: list[str] = []
    run_sweep(cfg, progress=False, stage_fns={"bench": _fake(third)})
    assert third == []  # a finished sweep recomputes nothing
    clean = run_sweep(_cfg(tmp_path, "clean"), progress=False, stage_fns={"bench": _fake([])})
    assert _table(store) == _table(clean)
    assert all(r["status"] == "ok" for r in store.rows.values()) and len(store) == 6


def test_finished_stages_are_not_rerun(tmp_path):
    cfg = _cfg(tmp_path, stages="train, sample, bench")
    first, samples = [], []

    def sample(cell, ctx):
        samples.append(cell.key)
        return {"samples": "x"}

    fns = {"train": lambda c, ctx: {"checkpoint": "ck"}, "sample": sample, "bench": _fake(first, kill_at=1)}
    with pytest.raises(Killed):
        run_sweep(cfg, progress=False, stage_fns=fns)
    assert len(samples) == 1  # the first cell's sample stage finished, then bench was killed
    fns["bench"] = _fake([])
    store = run_sweep(cfg, progress=False, stage_fns=fns)
    assert len(samples) == 6 and len(set(samples)) == 6  # the killed cell's sample stage was not redone
    assert all(r["checkpoint"] == "ck" and r["samples"] == "x" for r in store.rows.values())


def test_failing_cell_is_recorded_and_the_sweep_goes_on(tmp_path):
    cfg = _cfg(tmp_path)
    calls: list[str] = []
    store = run_sweep(cfg, progress=True, stage_fns={"bench": _fake(calls, fail_key=1)})
    assert len(calls) == 6 and len(store) == 6
    failed = [r for r in store.rows.values() if r["status"] == "failed"]
    assert len(failed) == 2
    for r in failed:
        assert "bench: ValueError: boom top_k=1" in r["reason"] and r["failed_stage"] == "bench"
        assert (tmp_path / "out" / "cells" / r["key"] / "error.txt").read_text().count("boom") >= 1
    assert sum(r["status"] == "ok" for r in store.rows.values()) == 4
    again: list[str] = []
    run_sweep(cfg, progress=False, stage_fns={"bench": _fake(again)})
    assert again == []  # failed cells are finished (recorded) unless retried
    run_sweep(cfg, progress=False, retry_failed=True, stage_fns={"bench": _fake(again)})
    assert sorted(again) == sorted(r["key"] for r in failed)
    assert all(r["status"] == "ok" for r in ResultStore(tmp_path / "out" / "results.csv").rows.values())


def test_rows_carry_axes_and_estimates(tmp_path):
    store = run_sweep(_cfg(tmp_path), progress=False, stage_fns={"bench": _fake([])})
    r = next(iter(store.rows.values()))
    assert json.loads(r["axes"]).keys() == {"backend.params.top_k", "backend.params.causal"}
    assert "axis.backend.params.top_k" in r and 0 <= float(r["bench_est_sparsity"]) < 1


def test_real_bench_stage(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.grid = {"backend.params.top_k": [1]}
    store = run_sweep(cfg, progress=False)
    (r,) = store.rows.values()
    assert r["status"] == "ok", r["reason"]
    assert r["bench_status"] == "ok" and float(r["bench_total_ms"]) > 0


def test_local_launcher_keeps_one_job_process_per_gpu(tmp_path, monkeypatch):
    """The local launcher with several CUDA devices: one job process per device at a time (replaced here by
    in-process runs of the job process's entry point, device ids mapped through CUDA_VISIBLE_DEVICES); the
    jobs write the store, each cell runs once; a job process that dies is named with its unfinished cell,
    which the next run finishes."""
    from types import SimpleNamespace

    import sweep_fakes

    from mocbench.sweep.launchers import local

    cfg = _cfg(tmp_path)
    started = []

    class FakePopen:
        crash_job = "5"

        def __init__(self, cmd, env):
            assert cmd[1:3] == ["-m", "mocbench.sweep.launchers.local"]
            started.append(env["CUDA_VISIBLE_DEVICES"])
            self.returncode = -9 if cmd[4] == self.crash_job else local.main(cmd[3:])

        def poll(self):
            return self.returncode

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.setattr(local, "_cuda_devices", lambda: 2)
    monkeypatch.setattr(local, "subprocess", SimpleNamespace(Popen=FakePopen))
    monkeypatch.setattr(local.time, "sleep", lambda s: None)
    lines: list[str] = []
    store = run_sweep(cfg, progress=False, stage_fns={"bench": sweep_fakes.bench}, log=lines.append)
    assert sorted(started) == ["2", "2", "2", "3", "3", "3"]  # 6 one-cell jobs, both devices used
    calls = (tmp_path / "out" / "calls.log").read_text().split()
    assert len(calls) == 5 and len(set(calls)) == 5  # each cell ran once, but the crashed job's
    assert len(store) == 5 and all(r["status"] == "ok" for r in store.rows.values())
    assert any("exited with code -9 without finishing 1 cell(s) (top_k=2,causal=False)" in s for s in lines), lines
    assert not list((tmp_path / "out" / "launcher").glob("*.pkl"))  # the job list is removed afterwards
    FakePopen.crash_job = None
    store = run_sweep(cfg, progress=False, stage_fns={"bench": sweep_fakes.bench})
    assert len(store) == 6 and len((tmp_path / "out" / "calls.log").read_text().split()) == 6


def test_cells_measured_in_another_environment_run_again_unless_reused(tmp_path):
    """A sweep store copied from another machine or commit is not reused silently: its cells run again
    (their stage markers are not read back), with one notice line; --reuse-foreign keeps them."""
    import csv

    cfg = _cfg(tmp_path)
    calls: list[str] = []
    run_sweep(cfg, progress=False, stage_fns={"bench": _fake(calls)})
    path = tmp_path / "out" / "results.csv"
    rows = list(ResultStore(path).rows.values())
    for r in rows:
        r["env_device"] = "Another GPU"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    kept: list[str] = []
    lines: list[str] = []
    run_sweep(cfg, progress=False, reuse_foreign=True, stage_fns={"bench": _fake(kept)}, log=lines.append)
    assert kept == [] and len(lines) == 1 and "keeping" in lines[0] and "env_device Another GPU ->" in lines[0]
    again: list[str] = []
    lines.clear()
    run_sweep(cfg, progress=False, stage_fns={"bench": _fake(again)}, log=lines.append)
    assert sorted(again) == sorted(calls) and "re-measuring 6 row(s)" in lines[0]
    assert all(r["env_device"] != "Another GPU" for r in ResultStore(path).rows.values())


def test_the_sweeps_threads_do_not_outlive_it(tmp_path):
    """``threads:`` applies while the sweep runs (its rows record it), not to the process afterwards."""
    import torch

    before = torch.get_num_threads()
    cfg = _cfg(tmp_path)
    cfg.threads = 1 if before != 1 else 2
    store = run_sweep(cfg, progress=False, stage_fns={"bench": _fake([])})
    assert {r["env_threads"] for r in store.rows.values()} == {str(cfg.threads)}
    assert torch.get_num_threads() == before
