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
