"""Sweep reports: ablation tables, Pareto / chunk-size figures and routing heatmaps from a store,
and the CLI entry points (``mocbench sweep --dry-run``, ``mocbench report --table ablation / --figure routing``)."""

from __future__ import annotations

import json

import mocbench
from mocbench import TokenLayout
from mocbench.bench.store import ResultStore
from mocbench.cli import main
from mocbench.sweep.report import chunk_tokens, write_report
from mocbench.sweep.routing import LayerStats, RoutingRecorder, summary


def _store(tmp_path):
    store = ResultStore(tmp_path / "sweep" / "results.csv")
    rows = [("dense", {}, "reference", 0.0, float("inf"), 0.5)]
    rows += [("moc", {"top_k": 1, "chunking": f"tokens:{m}"}, "chunk_size", 0.4 - m / 100, 20 + m / 4, 0.55)
             for m in (4, 8, 16, 32)]
    rows += [("moc", {"top_k": 1, "chunking": "tokens:8", "causal": c}, "causal", 0.3, 22.0, 0.56) for c in (True, False)]
    for i, (backend, params, ab, sp, psnr, vl) in enumerate(rows):
        key = f"k{i}"
        store.add({"key": key, "status": "ok", "backend": backend, "params": json.dumps(params), "label": f"c{i}",
                   "ablation": ab, "est_sparsity": sp, "routed_sparsity": sp, "psnr": psnr, "ssim": 0.9,
                   "val_loss": vl, "bench_total_ms": 1.0 + i})
        if backend == "moc":
            layout = TokenLayout.multi_shot(text_tokens=2, frames=2, tokens_per_frame=4, shots=2)
            st: dict[int, LayerStats] = {}
            b = mocbench.get_backend("moc", **{"chunking": "frame", **params, "causal": params.get("causal", True)})
            g = torch_gen(i)
            q, k, v = (torch_randn(layout, g) for _ in range(3))
            RoutingRecorder(b, 0, st)(q, k, v, layout)
            d = tmp_path / "sweep" / "cells" / key
            d.mkdir(parents=True)
            (d / "routing.json").write_text(json.dumps(summary(st, backend="moc", params=b.params.__dict__)))
    return store


def torch_gen(seed):
    import torch

    return torch.Generator().manual_seed(seed)


def torch_randn(layout, g):
    import torch

    return torch.randn(1, 2, layout.num_tokens, 8, generator=g)


def test_tables_and_figures(tmp_path):
    store = _store(tmp_path)
    written = write_report(store.path, tmp_path / "rep", sweep_out=tmp_path / "sweep")
    names = {p.name for p in written}
    assert {"ablations.md", "ablations.tex", "ablations.csv", "pareto.png", "sparsity_vs_chunk.png",
            "routing_causal_vs_noncausal.png", "routing_all.png"} <= names
    md = (tmp_path / "rep" / "ablations.md").read_text()
    assert "## chunk_size" in md and "## causal" in md and "PSNR vs dense" in md
    assert len(list((tmp_path / "rep" / "routing").glob("*.json"))) == 6
    assert chunk_tokens('{"chunking": "tokens:64"}') == ("tokens", 64) and chunk_tokens('{}') is None


def test_cli_report_and_dry_run(tmp_path, capsys):
    store = _store(tmp_path)
    assert main(["report", str(store.path), "--table", "ablation", "--out", str(tmp_path / "r2")]) == 0
    files = sorted(str(p) for p in (tmp_path / "sweep" / "cells").glob("*/routing.json"))
    assert main(["report", "--figure", "routing", *files, "--out", str(tmp_path / "r3")]) == 0
    assert (tmp_path / "r3" / "routing.png").is_file()
    assert main(["sweep", "configs/sweep/ablation_cpu.yaml", "--dry-run", "--json"]) == 0
    assert main(["sweep", "configs/sweep/ablation_gpu.yaml", "--dry-run"]) == 0
    assert main(["sweep", "configs/sweep/ablation_cpu.yaml", "grid.bench.frmes=[1]", "--dry-run"]) == 2
    assert "bench.frmes" in capsys.readouterr().err
