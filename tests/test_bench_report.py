"""Reports are pure functions of the store: tables (md/LaTeX/CSV), figures (PNG/PDF), speed-up vs dense."""

import json

import pytest

from mocbench.bench.report import build_tables, write_report
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


def family_store(path, *, block_density=True):
    """Every family at two sparsities on one cell (cpu_families' shape), with paired speed-ups."""
    store = ResultStore(path)
    cell = dict(workload="two_shots", shots=2, frames=4, tokens_per_frame=64, text_tokens=8,
                text_placement="interleaved", tokens=528, batch=1, heads=2, head_dim=16, dtype="float32",
                device="cpu", **{"pass": "fwd"}, env_torch="2.x", env_cpu="test cpu", env_git_sha="abc")
    dense_flops = 4 * 16 * 528 ** 2
    rows = [("dense", "dense", 0.0, 1.0, 1.0), ("moc@80", "moc", 0.794, 4.1, 0.52), ("moc@90", "moc", 0.903, 6.5, 0.31),
            ("sliding_tile@80", "sliding_tile", 0.808, 4.6, 0.19), ("sliding_tile@90", "sliding_tile", 0.901, 8.2, 0.1),
            ("vsa@80", "vsa", 0.80, 3.9, 0.24), ("vsa@90", "vsa", 0.901, 6.0, 0.12)]
    for label, backend, sparsity, speedup, density in rows:
        flops = int(dense_flops * (1 - sparsity))
        store.add({"key": label, "status": "ok", "label": label, "backend": backend, "family": backend,
                   "total_ms": 20.0 / speedup, "total_iqr_ms": 0.1, "prepare_ms": 0.1, "forward_ms": 20.0 / speedup,
                   "paired_speedup": speedup if backend != "dense" else "", "sparsity": sparsity,
                   "est_sparsity": sparsity, "total_flops": flops, "est_total_flops": flops, "attention_flops": flops,
                   "routing_flops": 0, "dense_flops": dense_flops, "num_chunks": 4, "tflops": 1.0,
                   "block_density": density if block_density else "", **cell})
    return path


def plotted(fig) -> set[tuple[tuple, tuple]]:
    """(x, y) of every line drawn with data, rounded."""
    return {(tuple(round(float(x), 6) for x in line.get_xdata()), tuple(round(float(y), 6) for y in line.get_ydata()))
            for ax in fig.axes for line in ax.get_lines() if len(line.get_xdata())}


def test_speedup_and_block_density_by_family_draw_one_line_per_family(tmp_path):
    """The family is the row's backend: moc@80 and moc@90 are one line through both sparsities; dense (the
    reference) is not drawn; block density has the 1 - sparsity floor."""
    from mocbench.bench import figures
    from mocbench.bench.tables import with_derived

    df = with_derived(load_table(family_store(tmp_path / "r.csv")))
    speed = figures.speedup_by_family(df)
    assert [t.get_text() for t in speed.legends[0].get_texts()] == ["moc", "sliding_tile", "vsa"]
    lines = plotted(speed)
    assert ((0.794, 0.903), (4.1, 6.5)) in lines and ((0.808, 0.901), (4.6, 8.2)) in lines
    assert ((0.8, 0.901), (3.9, 6.0)) in lines
    density = figures.block_density_by_family(df)
    lines = plotted(density)
    assert ((0.808, 0.901), (0.19, 0.1)) in lines and ((0.0, 1.0), (1.0, 0.0)) in lines
    empty = with_derived(load_table(family_store(tmp_path / "n.csv", block_density=False)))
    assert figures.block_density_by_family(empty) is None


def test_report_writes_the_family_figures(tmp_path):
    """Including latency vs shots, whose dash patterns once named only dense, moc and fixed_sparse."""
    out = tmp_path / "rep"
    written = {p.name for p in write_report(family_store(tmp_path / "r.csv"), out)}
    for stem in ("speedup_by_family", "block_density_by_family", "latency_vs_shots"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= written
        assert (out / "figures" / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
    text = (out / "report.md").read_text()
    assert "![speedup_by_family]" in text and "fidelity_by_family" not in text  # bench rows carry no fidelity


def test_fidelity_by_family_comes_from_bench_model_rows(tmp_path):
    """bench-model rows record per-layer rel-L2 to the model's dense attention: one line per family; the model's
    own attention (no fidelity) is not drawn."""
    from mocbench.bench import figures

    store = ResultStore(tmp_path / "m.csv")
    cell = dict(config_name="wan_small", model="WanTransformer3DModel", workload="wan_small", tokens=1560,
                dtype="bfloat16", device="cuda", shots=1, frames=4, **{"pass": "fwd"}, env_torch="2.x")
    for label, backend, sparsity, rel in (("diffusers", "diffusers", 0.0, ""), ("moc@80", "moc", 0.8, 0.12),
                                          ("moc@90", "moc", 0.9, 0.2), ("vsa@80", "vsa", 0.8, 0.08),
                                          ("vsa@90", "vsa", 0.9, 0.15)):
        store.add({"key": label, "status": "ok", "label": label, "backend": backend, "family": backend,
                   "sparsity": sparsity, "model_ms": 10.0, "fidelity_rel_l2_max": rel, **cell})
    df = load_table(tmp_path / "m.csv")
    fig = figures.fidelity_by_family(df)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["moc", "vsa"]
    assert ((0.8, 0.9), (0.12, 0.2)) in plotted(fig) and ((0.8, 0.9), (0.08, 0.15)) in plotted(fig)
    out = tmp_path / "rep"
    write_report(tmp_path / "m.csv", out)
    assert (out / "figures" / "fidelity_by_family.png").read_bytes()[:4] == b"\x89PNG"
