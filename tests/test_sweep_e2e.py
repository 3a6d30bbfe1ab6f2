"""End to end on a tiny quickstart model: train once (shared), sample with MoC while recording routing,
evaluate against dense samples; a re-run recomputes nothing."""

from __future__ import annotations

import json

from mocbench.sweep.runner import run_sweep
from mocbench.sweep.spec import load_sweep

SPEC = """
name: e2e
out_dir: {out}
base:
  stages: [train, sample, eval]
  backend: {{name: moc, params: {{top_k: 1, chunking: frame, local_anchor: chunk}}}}
  train:
    task_config: configs/task/quickstart_multishot.yaml
    overrides: {{trainer: {{max_steps: 2, enable_progress_bar: false, enable_model_summary: false}},
                data: {{train_size: 8, batch_size: 4, val_size: 2}}, model: {{dim: 32, depth: 2, heads: 2}}}}
  sample: {{num: 1, seed: 0, steps: 2}}
  eval: {{evaluators: [fidelity, cost]}}
grid: {{backend.params.causal: [true, false]}}
"""


def test_train_sample_eval_with_routing(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(SPEC.format(out=tmp_path / "out"))
    cfg = load_sweep(str(p))
    store = run_sweep(cfg, progress=False)
    rows = list(store.rows.values())
    assert [r["status"] for r in rows] == ["ok", "ok"], [r.get("reason") for r in rows]
    assert len(list((tmp_path / "out" / "train").iterdir())) == 1  # one shared training
    assert len(list((tmp_path / "out" / "ref").iterdir())) == 1  # one shared dense reference sample set
    for r in rows:
        routing = json.loads((tmp_path / "out" / "cells" / r["key"] / "routing.json").read_text())
        assert len(routing["layers"]) == 2 and routing["total"]["slots"] > 0
        assert float(r["psnr"]) > 0 and 0 < float(r["sparsity"]) < 1
        counts = [layer["counts"] for layer in routing["layers"]]
        upper = sum(h[0][1] for c in counts for h in c)  # shot 0 -> shot 1
        assert (upper == 0) == (r["params"].find('"causal": true') >= 0)
    mtimes = {f: f.stat().st_mtime_ns for f in (tmp_path / "out").rglob("*.json")}
    run_sweep(cfg, progress=False)
    assert {f: f.stat().st_mtime_ns for f in (tmp_path / "out").rglob("*.json")} == mtimes  # nothing recomputed


def test_finetune_stage_starts_from_the_trained_weights(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(SPEC.format(out=tmp_path / "out"))
    cfg = load_sweep(str(p), ["base.stages=[train,finetune,sample]", "grid.backend.params.causal=[true]",
                              "base.train.finetune_overrides.trainer.max_steps=1"])
    store = run_sweep(cfg, progress=False)
    (row,) = store.rows.values()
    assert row["status"] == "ok", row.get("reason")
    assert "/finetune/" in row["checkpoint"] and (tmp_path / "out" / "train").is_dir()
    import yaml

    ft = yaml.safe_load(next((tmp_path / "out" / "finetune").glob("*/config.yaml")).read_text())
    assert ft["backend"]["name"] == "moc" and "/train/" in ft["init_from"]


def test_sigkill_then_rerun_finishes_only_what_is_missing(tmp_path):
    """A real ``kill -9`` of ``mocbench sweep`` once a cell is finished, then a re-run."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from mocbench.bench.store import ResultStore

    p = tmp_path / "s.yaml"
    p.write_text(SPEC.format(out=tmp_path / "out").replace("[fidelity, cost]", "[cost]"))
    overrides = ["grid.backend.params.top_k=[1,2]"]
    store_path = tmp_path / "out" / "results.csv"
    cmd = [sys.executable, "-c", "import sys; from mocbench.cli import main; sys.exit(main(sys.argv[1:]))",
           "sweep", str(p), *overrides, "--no-progress", "--no-report"]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if store_path.is_file() and len(ResultStore(store_path)) >= 1:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = ResultStore(store_path).rows if store_path.is_file() else {}
    print("rows finished before the kill:", len(before))
    stamps = {k: (tmp_path / "out" / "cells" / k / "row.json").stat().st_mtime_ns for k in before}
    cfg = load_sweep(str(p), overrides)
    store = run_sweep(cfg, progress=False)
    assert len(store) == 4 and all(r["status"] == "ok" for r in store.rows.values())
    for k, r in before.items():  # finished cells were not recomputed
        assert (tmp_path / "out" / "cells" / k / "row.json").stat().st_mtime_ns == stamps[k]
        assert store.rows[k]["finished_at"] == r["finished_at"]
    assert len(list((tmp_path / "out" / "train").iterdir())) == 1
