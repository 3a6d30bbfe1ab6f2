"""Evaluation runner (rows, resume, skips) and the paper tables (bold best, proxy daggers, footnotes)."""

from __future__ import annotations

import math

import pytest
from eval_fakes import write_sample_set

from mocbench.bench.store import ResultStore, load_table
from mocbench.cli import main
from mocbench.eval.paper_table import build_paper_table, to_latex, to_markdown, write_paper_table
from mocbench.eval.runner import EvalRequest, evaluate
from mocbench.eval.vbench_real import VBenchSettings


def _rows(path):
    store = ResultStore(path)
    common = {"status": "ok", "env_cpu": "test-cpu", "env_torch": "2.x"}
    for label, backend, psnr, flick, mem, flops in (("dense", "dense", math.inf, 0.90, 0.80, 2.0),
                                                    ("moc(top_k=1)", "moc", 20.0, 0.95, 0.70, 1.0),
                                                    ("shot_local", "shot_local", 15.0, 0.85, 0.40, 0.9)):
        store.add({**common, "key": f"f|{label}", "label": label, "backend": backend, "evaluator": "fidelity",
                   "psnr": psnr, "ssim": 1.0 if psnr == math.inf else psnr / 30})
        store.add({**common, "key": f"p|{label}", "label": label, "backend": backend, "evaluator": "vbench_proxy",
                   "temporal_flickering": flick, "dynamic_degree": 0.5, "motion_smoothness": 0.9,
                   "imaging_quality": 0.5, "proxy": 1})
        store.add({**common, "key": f"m|{label}", "label": label, "backend": backend, "evaluator": "memory",
                   "entity_recall": mem, "entity_lo": mem - 0.1, "entity_hi": mem + 0.1, "chance": 0.12,
                   "scene_recall": mem, "scene_lo": mem - 0.1, "scene_hi": mem + 0.1, "scene_chance": 0.2})
        store.add({**common, "key": f"c|{label}", "label": label, "backend": backend, "evaluator": "cost",
                   "sparsity": 1 - flops / 2, "attn_gflops": flops})
        store.add({"key": f"v|{label}", "label": label, "backend": backend, "evaluator": "vbench",
                   "dimension": "subject_consistency", "status": "skipped",
                   "reason": "missing VBench weights: /w/dino_model/dino_vitbase16_pretrain.pth"})
    store.add({"key": "v|dense|tf", "label": "dense", "backend": "dense", "evaluator": "vbench",
               "dimension": "temporal_flickering", "status": "ok", "vbench_temporal_flickering": 0.97})
    return path


def test_paper_table_marks_proxies_bolds_nothing_without_intervals_and_explains_missing_columns(tmp_path):
    df = load_table(_rows(tmp_path / "eval.csv"))
    t = build_paper_table(df, "paper2")
    assert list(t["values"].index) == ["dense", "moc(top_k=1)", "shot_local"]
    md = to_markdown(t)
    dense = next(line for line in md.splitlines() if line.startswith("| dense"))
    assert "0.97 |" in dense  # real VBench flickering wins over the proxies, unmarked
    assert "0.9†" in dense and "ref" in dense  # a proxy cell, and dense is the fidelity reference
    assert "**" not in md.split("\n", 1)[1], "no row has intervals, so nothing may be bold"
    assert "identity" not in md, "the old memory probe (constant grey scores 1) is not a column any more"
    assert "mocbench memory" in md
    assert "n/a" in dense and "dino_vitbase16_pretrain.pth" in md  # missing weights named in the footnote
    assert "test-cpu" in md and "weight-free proxy" in md
    tex = to_latex(t)
    assert r"$^\dagger$" in tex and r"moc(top\_k=1)" in tex


def _interval_rows(path, moc_interval):
    store = ResultStore(path)
    for label, psnr, ckpt in (("dense", math.inf, "d.ckpt"), ("moc", 20.0, "d.ckpt"), ("strided", 16.0, "s.ckpt")):
        lo, hi = moc_interval if label == "moc" else (psnr - 1, psnr + 1)
        store.add({"key": f"f|{label}", "status": "ok", "label": label, "backend": label, "evaluator": "fidelity",
                   "psnr": psnr, "psnr_lo": lo, "psnr_hi": hi, "checkpoint": ckpt})
    return load_table(path)


def test_bold_only_when_the_best_interval_excludes_the_runner_up(tmp_path):
    md = to_markdown(build_paper_table(_interval_rows(tmp_path / "a.csv", (18.0, 22.0)), "paper1"))
    assert "**20**" in md  # moc's interval [18, 22] excludes strided's 16
    md = to_markdown(build_paper_table(_interval_rows(tmp_path / "b.csv", (15.0, 25.0)), "paper1"))
    assert "**" not in md.split("\n", 1)[1]  # [15, 25] contains 16: noise could explain the ranking


def test_swapped_rows_are_marked_and_explained(tmp_path):
    t = build_paper_table(_interval_rows(tmp_path / "a.csv", (18.0, 22.0)), "paper1")
    assert t["swaps"] == ["moc"]  # same checkpoint as dense; strided has its own
    md = to_markdown(t)
    assert "| moc §" in md and "| strided |" in md and "swapped in without training (moc)" in md
    assert r"\S{}" in to_latex(t)


def test_report_cli_writes_markdown_latex_csv(tmp_path, capsys):
    store = _rows(tmp_path / "eval.csv")
    assert main(["report", str(store), "--table", "paper1", "--out", str(tmp_path / "out")]) == 0
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"paper1.md", "paper1.tex", "paper1.csv"}
    assert "Table 1" in capsys.readouterr().out
    assert "identity" not in (tmp_path / "out" / "paper1.md").read_text()  # no memory columns for single shot
    with pytest.raises(ValueError, match="does not exist"):
        write_paper_table(tmp_path / "nope.csv", "paper2")


def test_evaluate_writes_rows_skips_what_does_not_apply_and_resumes(tmp_path):
    ref = write_sample_set(tmp_path / "dense")
    moc = write_sample_set(tmp_path / "moc", backend="moc", params={"top_k": 1}, noise=0.05)
    store_path = tmp_path / "eval.csv"
    vb = VBenchSettings(python=str(tmp_path / "no-python"), dimensions=("temporal_flickering", "imaging_quality"))
    logs = []
    for d in (ref, moc):
        evaluate(EvalRequest(str(d), reference=str(ref), store=str(store_path), vbench=vb,
                             evaluators=("fidelity", "vbench_proxy", "memory", "val_loss", "vbench")), log=logs.append)
    df = load_table(store_path)
    get = lambda label, ev, col: df[(df.label == label) & (df.evaluator == ev)][col].iloc[0]
    assert get("dense", "fidelity", "psnr") == math.inf and 10 < get("moc(top_k=1)", "fidelity", "psnr") < 40
    assert get("dense", "memory", "entity_recall") == 1.0 and get("dense", "memory", "entity_found") == 1.0
    assert get("moc(top_k=1)", "vbench_proxy", "proxy") == 1
    assert get("dense", "val_loss", "status") == "skipped"  # no checkpoint in these fake sets
    vb_rows = df[df.evaluator == "vbench"]
    assert set(vb_rows.status) == {"skipped"} and vb_rows.reason.str.contains("no-python").all()
    n = len(df)
    logs.clear()
    evaluate(EvalRequest(str(moc), reference=str(ref), store=str(store_path), vbench=vb,
                         evaluators=("fidelity", "memory")), log=logs.append)
    assert len(load_table(store_path)) == n and all("done already" in line for line in logs)


def test_bad_evaluator_names_and_paths_are_clear_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown evaluator.*'psnr'.*known: fidelity"):
        EvalRequest(str(tmp_path), evaluators=("psnr",))
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown VBench dimension"):
        VBenchSettings(dimensions=("color_magic",))
