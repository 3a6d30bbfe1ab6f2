"""One layout geometry: ``mocbench.config.Geometry`` is declared once and carried (flat in YAML) by the plan
layout, bench workloads and cells, and a sweep's bench stage; each builds its layout through
``LayoutConfig.build``. Keys hash the geometry without its unset fields, so committed stores keep theirs."""

import csv
from dataclasses import fields
from pathlib import Path

import pytest

from mocbench.bench.config import WorkloadConfig, expand_cells, load_bench_config
from mocbench.config import ConfigError, Geometry, LayoutConfig, PlanConfig, load_config
from mocbench.layout import TokenLayout
from mocbench.sweep.estimate import cell_estimate
from mocbench.sweep.spec import BenchSpec, expand, load_sweep
from mocbench.tasks.config import load_task_config, task_layout
from mocbench.tasks.model import DiTShape, VideoDiT

ROOT = Path(__file__).resolve().parents[1]
SWEEP = str(ROOT / "configs/sweep/ablation_cpu.yaml")


def test_every_layout_config_carries_the_geometry_fields():
    names = [f.name for f in fields(Geometry)]
    assert names == ["tokens_per_frame", "text_tokens", "text_placement", "frame_shape"]
    for schema in (LayoutConfig, WorkloadConfig, BenchSpec):
        assert issubclass(schema, Geometry) and set(names) <= {f.name for f in fields(schema)}, schema


def test_plan_bench_and_sweep_build_the_same_layout_from_the_same_keys():
    keys = ["tokens_per_frame=16", "text_tokens=3", "text_placement=back", "frame_shape=[4,4]"]
    expected = TokenLayout.multi_shot(text_tokens=3, frames=2, tokens_per_frame=16, text_placement="back", shots=3,
                                      frame_shape=(4, 4))
    plan = load_config(PlanConfig, None, ["layout.shots=3", "layout.frames=2", *(f"layout.{k}" for k in keys)])
    assert plan.layout.build() == expected
    bench = load_bench_config(None, ["workloads.0.shots=[3]", "workloads.0.frames=[2]",
                                     *(f"workloads.0.{k}" for k in keys)])
    assert [c.layout() for c in expand_cells(bench)] == [expected]
    sweep = load_sweep(SWEEP, ["base.stages=[bench]", "base.bench.shots=3", "base.bench.frames=2",
                               *(f"base.bench.{k}" for k in keys)])
    b = sweep.base.bench
    assert b.with_counts(b.shots, b.frames).build() == expected


def test_a_bad_geometry_names_where_it_is():
    with pytest.raises(ConfigError, match=r"workloads\[0\]: .*frame_shape.*tokens_per_frame is 64"):
        load_bench_config(None, ["workloads.0.frame_shape=[4,4]"])
    with pytest.raises(ConfigError, match="bench: text_placement must be one of .* got 'middle'"):
        load_sweep(SWEEP, ["base.bench.text_placement=middle"])
    with pytest.raises(ConfigError, match="bench: tokens_per_frame must be >= 1, got 0"):
        load_sweep(SWEEP, ["base.bench.tokens_per_frame=0"])


def test_unset_geometry_stays_out_of_sweep_keys_and_set_geometry_changes_them():
    base = {c.key for c in _cells()}
    assert {c.key for c in _cells("base.bench.text_placement=interleaved", "base.bench.frame_shape=null")} == base
    assert {c.key for c in _cells("base.bench.frame_shape=[8,8]")}.isdisjoint(base)
    assert {c.key for c in _cells("base.bench.text_placement=front")}.isdisjoint(base)


def _cells(*overrides):
    return expand(load_sweep(SWEEP, list(overrides)))


def test_the_committed_headline_store_keeps_its_keys():
    """A changed key would make a resumed run measure the committed cells again."""
    cells = {c.key for c in expand_cells(load_bench_config(str(ROOT / "configs/bench/cpu_moc_32k.yaml")))}
    with open(ROOT / "results/cpu_moc_32k/results.csv", newline="") as f:
        stored = {row["key"] for row in csv.DictReader(f)}
    assert cells == stored


def test_sweep_bench_estimate_uses_the_bench_geometry():
    cell = _cells("base.stages=[bench]", "base.bench.shots=2", "base.bench.frames=2", "base.bench.text_tokens=4",
                  "base.bench.tokens_per_frame=16", "base.bench.frame_shape=[4,4]")[0]
    assert cell_estimate(cell)["bench_tokens"] == 2 * (4 + 2 * 16)


def test_the_task_layout_is_the_one_the_model_attends_over():
    """Sweep estimates and eval cost columns use ``task_layout``: the model's own stream (frame geometry,
    a last partial temporal patch counted as a frame)."""
    cfg = load_task_config(str(ROOT / "configs/task/quickstart_multishot.yaml"), ["data.frames=3"])
    d, m = cfg.data, cfg.model
    model = VideoDiT(DiTShape(model=m, max_height=d.height, max_width=d.width), "dense")
    layout = task_layout(cfg)
    assert layout == model.layout_for(d.shots, d.frames, d.height, d.width, d.text_tokens)
    assert layout.frames_per_shot == (2,) * d.shots and layout.frame_shape == (d.height // m.patch_size,
                                                                                d.width // m.patch_size)
