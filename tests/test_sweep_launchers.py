"""Sweep launchers: submitit jobs (local executor: real processes; debug executor: in this process), the job
registry (no second job for a cell whose job is queued or running), a job killed mid-way and resumed, the
``launcher:`` config checks, the SLURM script submitit would submit, and ``--dry-run``'s job table."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import sweep_fakes

from mocbench.bench.store import ResultStore
from mocbench.cli import main
from mocbench.config import ConfigError
from mocbench.sweep.launchers import make_launcher
from mocbench.sweep.launchers.job_registry import JobRegistry, active_jobs, job_states
from mocbench.sweep.runner import run_sweep
from mocbench.sweep.spec import expand, load_sweep

needs_submitit = pytest.mark.skipif(importlib.util.find_spec("submitit") is None,
                                    reason="submitit is not installed (pip install 'mocbench[cluster]')")

SPEC = """
name: t
out_dir: {out}
threads: 1
launcher: {{cluster: local, group_by: cell, poll_seconds: 0.2, timeout_min: 10}}
base:
  stages: [bench]
  backend: {{name: moc, params: {{top_k: 1, chunking: frame}}}}
  bench: {{shots: 2, frames: 2, tokens_per_frame: 8, text_tokens: 4, heads: 1, head_dim: 16, repeats: 1}}
grid: {{backend.params.top_k: [0, 1], backend.params.causal: [true, false]}}
"""
# bookkeeping that differs between any two runs; env_code / env_git_sha fingerprint the working tree when each
# process started, which other people's edits change while these tests run in a shared checkout
VOLATILE = {"finished_at", "cell_seconds", "env_code", "env_git_sha"}


def _cfg(tmp_path, name="out", *overrides):
    p = tmp_path / f"{name}.yaml"
    p.write_text(SPEC.format(out=tmp_path / name))
    return load_sweep(str(p), list(overrides))


def _table(path) -> list[dict]:
    rows = ResultStore(path).rows.values()
    return sorted(({k: v for k, v in r.items() if k not in VOLATILE} for r in rows), key=lambda r: r["key"])


def _until(what: str, cond, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def fakes_importable(monkeypatch):
    """Job processes import the fake stages by name (sweep_fakes), like they import mocbench."""
    here = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))


@needs_submitit
def test_submitit_local_jobs_killed_mid_way_resume_to_the_uninterrupted_table(tmp_path, fakes_importable):
    """4 cells -> 4 submitit jobs (local executor, real processes). One job is SIGKILLed while its cell runs
    (the submitting command has already returned, --no-wait): a re-run meanwhile submits nothing (its job is
    still RUNNING in the registry), a re-run after the kill submits only that cell, and the final store equals
    an uninterrupted run's in every non-timing column."""
    cfg = _cfg(tmp_path)
    out = tmp_path / "out"
    fns = {"bench": sweep_fakes.bench}
    # reuse_foreign: rows written by job processes carry the code fingerprint of the tree when they started,
    # which edits by other people in a shared checkout can change mid-test (resume policy: test_sweep_runner)
    (victim,) = [c for c in expand(cfg) if c.label == "top_k=1,causal=False"]
    (out / "hold").mkdir(parents=True)
    (out / "hold" / victim.key).touch()
    lines: list[str] = []
    run_sweep(cfg, launcher="submitit", wait=False, progress=False, stage_fns=fns, log=lines.append)
    registry = JobRegistry(out)
    assert len(registry.entries()) == 4 and sum("submitted job" in s for s in lines) == 4
    store_path = out / "results.csv"
    started = out / "hold" / f"{victim.key}.started"
    _until("the other 3 rows and the victim's start",
           lambda: started.is_file() and store_path.is_file() and len(ResultStore(store_path)) == 3)
    lines.clear()
    run_sweep(cfg, launcher="submitit", wait=False, reuse_foreign=True, progress=False, stage_fns=fns,
              log=lines.append)
    assert len(registry.entries()) == 4, "a cell whose job is running was submitted again"
    assert any("1 cell(s) held by queued or running jobs" in s and "RUNNING" in s for s in lines), lines
    os.kill(int(started.read_text()), signal.SIGKILL)
    entry = next(e for e in registry.entries() if e["keys"] == [victim.key])
    _until("the killed job to end", lambda: job_states([entry])[entry["job_id"]] != "RUNNING")
    assert job_states([entry])[entry["job_id"]] == "ENDED" and victim.key not in ResultStore(store_path).rows
    lines.clear()
    store = run_sweep(cfg, launcher="submitit", reuse_foreign=True, progress=False, stage_fns=fns,
                      log=lines.append)
    assert sum("submitted job" in s for s in lines) == 1 and len(registry.entries()) == 5
    calls = (out / "calls.log").read_text().split()
    assert sorted(calls) == sorted([*store.rows, victim.key])  # each cell once, the killed one twice
    assert all(r["status"] == "ok" for r in store.rows.values()) and len(store) == 4
    assert {e.get("state") for e in registry.entries()} == {"FINISHED", "ENDED"}  # final states recorded
    clean = run_sweep(_cfg(tmp_path, "clean"), launcher="local", progress=False, stage_fns=fns, log=lambda m: None)
    assert _table(store_path) == _table(clean.path)


@needs_submitit
def test_debug_jobs_group_cells_by_training_and_a_requeued_job_skips_finished_cells(tmp_path):
    """group_by: training puts the cells sharing a training into one job (2 seeds -> 2 jobs of 2 cells);
    a job run again (as after a SLURM requeue through its checkpoint()) skips the cells it finished."""
    cfg = _cfg(tmp_path, "out", "launcher.cluster=debug", "launcher.group_by=training", "base.stages=[train,bench]",
               "grid.seed=[0,1]", "grid.backend.params.causal=[true]")
    calls: list[str] = []

    def bench(cell, ctx):
        calls.append(cell.label)
        return {"bench_total_ms": 1.0}

    fns = {"train": sweep_fakes.train, "bench": bench}
    lines: list[str] = []
    store = run_sweep(cfg, launcher="submitit", progress=False, stage_fns=fns, log=lines.append)
    entries = JobRegistry(tmp_path / "out").entries()
    assert len(store) == 4 and all(r["status"] == "ok" for r in store.rows.values())
    assert [len(e["keys"]) for e in entries] == [2, 2] and all(e["name"].startswith("train-") for e in entries)
    assert {r["checkpoint"] for r in store.rows.values()} == {"ckpt-seed0", "ckpt-seed1"}
    from mocbench.sweep.jobs import make_jobs

    jobs = make_jobs(expand(cfg), out=str(tmp_path / "out"), sweep_name="t", threads=1, group_by="training",
                     rows={}, stage_fns=fns)  # planned before any row existed, like the submitted jobs
    requeued = jobs[0].checkpoint()
    assert requeued.function is jobs[0]
    calls.clear()
    assert requeued.result() == {} and calls == []  # every cell of the job finished since it was planned
    again: list[str] = []
    run_sweep(cfg, launcher="submitit", progress=False, stage_fns=fns, log=again.append)
    assert not any("submitted" in s for s in again) and len(JobRegistry(tmp_path / "out").entries()) == 2


def test_cells_held_by_a_queued_job_are_not_run_by_any_launcher(tmp_path, monkeypatch):
    """A registry entry whose job is PENDING (or unknown to sacct for a few minutes after submission) holds its
    cells: neither launcher runs them; COMPLETED or long-UNKNOWN jobs hold nothing."""
    cfg = _cfg(tmp_path, "out", "launcher.cluster=slurm")
    keys = [c.key for c in expand(cfg)]
    registry = JobRegistry(tmp_path / "out")
    now = time.time()
    registry.add([{"job_id": "11", "cluster": "slurm", "name": "a", "keys": keys[:1], "folder": "f", "submitted_at": now},
                  {"job_id": "12", "cluster": "slurm", "name": "b", "keys": keys[1:2], "folder": "f", "submitted_at": now},
                  {"job_id": "13", "cluster": "slurm", "name": "c", "keys": keys[2:3], "folder": "f",
                   "submitted_at": now - 3600},
                  {"job_id": "14", "cluster": "slurm", "name": "d", "keys": keys[3:], "folder": "f", "submitted_at": now}])
    states = {"11": "PENDING", "12": "UNKNOWN", "13": "UNKNOWN", "14": "COMPLETED"}

    def fake_states(entries):
        return {e["job_id"]: states[e["job_id"]] for e in entries}

    assert [(e["job_id"], st) for e, st in active_jobs(registry, fake_states)] == [("11", "PENDING"), ("12", "UNKNOWN")]

    from mocbench.sweep import runner

    monkeypatch.setattr(runner, "active_jobs", lambda reg: active_jobs(reg, fake_states))
    calls: list[str] = []
    fns = {"bench": lambda cell, ctx: calls.append(cell.key) or {"bench_total_ms": 1.0}}
    lines: list[str] = []
    run_sweep(cfg, launcher="local", progress=False, stage_fns=fns, log=lines.append)
    assert sorted(calls) == sorted(keys[2:]) and any("2 cell(s) held" in s for s in lines)


@pytest.mark.parametrize("override, culprit", [
    ("launcher.cluster=slrum", "launcher.cluster must be one of slurm, local, debug, got 'slrum'"),
    ("launcher.group_by=node", "launcher.group_by must be one of training, cell"),
    ("launcher.gpus_per_node=-1", "launcher.gpus_per_node must be an int >= 0, got -1"),
    ("launcher.timeout_min=0", "launcher.timeout_min must be an int >= 1, got 0"),
    ("launcher.mem_gb=0", "launcher.mem_gb must be > 0"),
    ("launcher.partition=''", "launcher.partition must be a non-empty string"),
    ("launcher.partiton=gpu", "launcher.partiton"),
    ("launcher.slurm_additional_parameters.time=10", "slurm_additional_parameters.time: set launcher.timeout_min"),
    ("launcher.slurm_additional_parameters.ntasks_per_node=4", "a sweep job is one process on one node"),
    ("launcher.setup=[' ']", "launcher.setup[0] must be a non-empty shell line"),
])
def test_launcher_config_mistakes_name_the_key(tmp_path, override, culprit):
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, "out", override)
    assert culprit in str(err.value)


@needs_submitit
def test_slurm_job_script_carries_the_launcher_resources(tmp_path, monkeypatch):
    """What sbatch would get (rendered by submitit without a cluster): partition, account, GPUs, CPUs, memory,
    time, extra options, setup lines, one task on one node; without sbatch the launcher refuses, naming it."""
    cfg = _cfg(tmp_path, "out", "launcher.cluster=slurm", "launcher.partition=gpu", "launcher.account=lab",
               "launcher.gpus_per_node=2", "launcher.cpus_per_task=16", "launcher.mem_gb=64",
               "launcher.timeout_min=90", "launcher.setup=['module load cuda']",
               "launcher.slurm_additional_parameters.exclusive=true")
    launcher = make_launcher("submitit", cfg)
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ConfigError, match="sbatch is not on PATH"):
        launcher.executor()
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    script = launcher.executor()._executor._make_submission_file_text("python -m job", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --cpus-per-task=16", "#SBATCH --mem=64GB", "#SBATCH --time=90", "#SBATCH --exclusive",
                 "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --job-name=mocbench-t", "module load cuda"):
        assert line in script, line
    assert launcher.comparable == ("env_code", "env_torch")  # jobs run on other machines


def test_dry_run_lists_jobs_with_resources_and_no_wait_needs_submitit(tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text(SPEC.format(out=tmp_path / "out"))
    assert main(["sweep", str(p), "--launcher", "submitit", "launcher.cluster=slurm", "launcher.partition=gpu",
                 "launcher.group_by=training", "--dry-run", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [c["state"] for c in d["cells"]] == ["to run"] * 4 and len(d["jobs"]) == 4  # bench only: no training
    assert d["jobs"][0]["resources"] == "slurm, partition=gpu, 1 GPU, 8 CPU, 10 min"
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    assert main(["sweep", str(p), "--no-wait"]) == 2
    assert "--no-wait needs --launcher submitit" in capsys.readouterr().err


def test_submitit_missing_is_one_error_saying_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    launcher = make_launcher("submitit", _cfg(tmp_path, "out", "launcher.cluster=local"))
    with pytest.raises(ConfigError, match=r"pip install 'mocbench\[cluster\]'"):
        launcher.executor()


def test_slurm_jobs_of_cells_sharing_a_pending_training_wait_for_the_job_that_trains(tmp_path, monkeypatch):
    """group_by: cell on SLURM: per pending shared training, one job runs it; the other jobs of its cells get
    --dependency=afterany:<that job> (or on a queued job of an earlier call); a done training needs no wait."""
    from types import SimpleNamespace

    from mocbench.sweep.jobs import make_jobs, waits_for

    class FakeExecutor:
        def __init__(self):
            self.calls, self.params, self.next_id = [], {}, 100

        def update_parameters(self, **kw):
            self.params.update(kw)

        def submit_array(self, jobs):
            self.calls.append(([j.name for j in jobs], dict(self.params["slurm_additional_parameters"])))
            self.next_id += len(jobs)
            return [SimpleNamespace(job_id=str(self.next_id - len(jobs) + i + 1), paths=SimpleNamespace(stderr="e"))
                    for i in range(len(jobs))]

    cfg = _cfg(tmp_path, "out", "launcher.cluster=slurm", "base.stages=[train,bench]", "grid.seed=[0,1]",
               "grid.backend.params.causal=[true]", "launcher.slurm_additional_parameters.dependency=afterok:7")
    jobs = make_jobs(expand(cfg), out=cfg.out_path, sweep_name="t", threads=1, group_by="cell", rows={})
    a, b, c, d = jobs  # top_k 0 then 1, each with seed 0 then 1: a and c share a training, b and d another
    assert a.training == c.training != b.training == d.training
    executor = FakeExecutor()
    launcher = make_launcher("submitit", cfg, log=lambda m: None)
    monkeypatch.setattr(launcher, "executor", lambda: executor)
    waits = waits_for(jobs, cfg.out_path, {})
    assert waits == {a.name: None, b.name: None, c.name: a.name, d.name: b.name}
    assert launcher.start(jobs, waits) == ["101", "102", "103", "104"]
    assert executor.calls == [([a.name, b.name], {"dependency": "afterok:7"}),
                              ([c.name], {"dependency": "afterok:7,afterany:101"}),
                              ([d.name], {"dependency": "afterok:7,afterany:102"})]
    assert [(e["job_id"], e["after"]) for e in JobRegistry(tmp_path / "out").entries()] == \
        [("101", None), ("102", None), ("103", "101"), ("104", "102")]

    # a later call: job 101 (seed 0's training) still runs; seed 1's training is done
    done = tmp_path / "out" / b.training / "done.json"
    done.parent.mkdir(parents=True)
    done.write_text("{}")
    waits = waits_for([c, d], cfg.out_path, {a.training: "101"})
    assert waits == {c.name: "101", d.name: None}
    executor.calls.clear()
    launcher.start([c, d], waits)
    assert executor.calls == [([d.name], {"dependency": "afterok:7"}), ([c.name], {"dependency": "afterok:7,afterany:101"})]
