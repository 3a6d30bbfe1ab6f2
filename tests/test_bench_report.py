"""Reports are pure functions of the store: tables (md/LaTeX/CSV), figures (PNG/PDF), speed-up vs dense."""

import json

import pytest

from mocbench.bench.report import build_tables
from mocbench.bench.store import ResultStore, load_table
from mocbench.cli import main


def synthetic_store(path):
    store = ResultStore(path)
    env = {"env_torch": "2.x", "env_cpu": "test cpu", "env_git_sha": "abc"}
    for shots in (1, 2, 4):
        tokens = 100 * shots
        cell = dict(workload="w", shots=shots, frames=2, tokens_per_frame=40, text_tokens=10,
                    text_placement="interleaved", tokens=tokens, batch=1, heads=1, head_dim=8, dtype="float32",
                    device="cpu", **{"pass": "fwd"}, **env)
        dense_flops = 4 * 8 * tokens ** 2
        for label, family, ms, sparsity in (("dense", "dense", 2.0 * shots ** 2, 0.0),
                                            ("moc(top_k=2)", "moc", 1.0 * shots, 0.5),
                                            ("shot_local", "fixed_sparse", 1.5 * shots, 0.4)):
            flops = int(dense_flops * (1 - sparsity))
            store.add({"key": f"{label}-{shots}", "status": "ok", "label": label, "backend": label.split("(")[0],
                       "family": family, "total_ms": ms, "total_iqr_ms": 0.1, "prepare_ms": 0.1, "forward_ms": ms,
                       "sparsity": sparsity, "est_sparsity": sparsity, "total_flops": flops, "est_total_flops": flops,
                       "attention_flops": flops, "routing_flops": 0, "dense_flops": dense_flops, "num_chunks": 4,
                       "tflops": flops / ms / 1e9, "peak_mem_mb": float("nan"), **cell})
        store.add({"key": f"xformers-{shots}", "status": "skipped", "label": "xformers", "backend": "xformers",
                   "reason": "xformers is not installed", **cell})
    return path


def test_speedup_is_against_the_dense_row_of_the_same_cell(tmp_path):
    built = build_tables(load_table(synthetic_store(tmp_path / "r.csv")))
    lat = built["latency"]
    moc4 = lat[(lat["backend"] == "moc(top_k=2)") & (lat["shots"] == 4)].iloc[0]
    assert moc4["speed-up"] == pytest.approx(32.0 / 4.0)
    assert (lat[lat["backend"] == "dense"]["speed-up"] == 1).all()
    assert built["status"].iloc[0].to_dict() == {"backend": "xformers", "status": "skipped", "cells": 3,
                                                 "reason": "xformers is not installed"}
    assert (built["flops"]["measured/analytic"] == 1).all()
    pivot = built["latency_pivot"]
    assert list(pivot.columns[-3:]) == ["dense", "moc(top_k=2)", "shot_local"] and "(8.00x)" in pivot.iloc[-1, -2]


def test_scaling_slopes_are_log_log_fits_per_backend(tmp_path):
    scaling = build_tables(load_table(synthetic_store(tmp_path / "r.csv")))["scaling"].set_index("backend")
    assert scaling.loc["dense", "slope vs shots"] == pytest.approx(2.0)  # 2 * shots^2
    assert scaling.loc["dense", "slope vs tokens"] == pytest.approx(2.0)
    assert scaling.loc["moc(top_k=2)", "slope vs shots"] == pytest.approx(1.0)
    assert scaling.loc["moc(top_k=2)", "shots"] == "1-2-4" and scaling.loc["moc(top_k=2)", "tokens"] == "100-400"
    assert "xformers" not in scaling.index  # skipped cells have no latency


def test_report_writes_tables_figures_and_env(tmp_path, capsys):
    store = synthetic_store(tmp_path / "r.csv")
    assert main(["report", str(store), "--out", str(tmp_path / "rep")]) == 0
    rep = tmp_path / "rep"
    for name in ("latency", "latency_pivot", "flops", "scaling", "status"):
        for suffix in (".md", ".tex", ".csv"):
            assert (rep / "tables" / f"{name}{suffix}").stat().st_size > 0
    for stem in ("latency_vs_shots", "speedup_vs_sparsity"):
        assert (rep / "figures" / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
        assert (rep / "figures" / f"{stem}.pdf").read_bytes()[:4] == b"%PDF"
    assert "moc(top\\_k=2)" in (rep / "tables" / "latency.tex").read_text()
    assert json.loads((rep / "env.json").read_text())[0]["cpu"] == "test cpu"
    text = (rep / "report.md").read_text()
    assert "xformers is not installed" in text and "![latency_vs_shots]" in text
    assert "speed-up vs dense" in capsys.readouterr().out


def test_report_on_missing_store_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
