"""``mocbench bench-model`` (mocbench.integrations.diffusers.bench) and its table in ``mocbench report``.

A tiny HunyuanVideo architecture (2 heads x 8, 2 dual- and 1 single-stream block, padded captions) run at
reduced depth, random weights, no downloads. Guards: one row per backend plus the model's own attention;
validation before timing (dense against the model, every layer call against its float64 reference; a
mismatch is a failed row); unsupported backends are skipped rows with the reason; per-layer fidelity
columns (0 for dense, > 0 for sparse MoC); full-depth figures extrapolated from per-block cost and only
at reduced depth; the store's resume policy (foreign rows re-measured unless reuse_foreign); weights
created in the target dtype (never float32 first); the report's model table.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers is not installed (pip install -e '.[diffusers]')")
yaml = pytest.importorskip("yaml")

from mocbench.bench.resume import ResumePolicy
from mocbench.bench.store import ResultStore, read_rows
from mocbench.config import ConfigError
from mocbench.integrations.diffusers import bench as bench_module
from mocbench.integrations.diffusers.bench import load_bench_model_config, run_bench_model

TINY_HUNYUAN = {"_class_name": "HunyuanVideoTransformer3DModel", "in_channels": 4, "out_channels": 4,
                "num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 2, "num_single_layers": 1,
                "num_refiner_layers": 1, "patch_size": 2, "patch_size_t": 1, "text_embed_dim": 8,
                "pooled_projection_dim": 8, "rope_axes_dim": [2, 2, 4], "guidance_embeds": True}
OWN = "diffusers (own attention)"
MOC = "moc(top_k=1, causal=False)"


def tiny_config(tmp_path, backends=None, **model):
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_HUNYUAN))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({
        "name": "tiny", "model": {"architecture": "tiny.json", "num_layers": 1, **model},
        "inputs": {"batch": 2, "frames": 3, "height": 8, "width": 8, "text_tokens": 6, "text_valid": [6, 3]},
        "backends": backends or [{"name": "dense"}, {"name": "moc", "params": {"top_k": 1, "causal": False}}],
        "timing": {"warmup": 0, "repeats": 2},
        "validate": {"frames": 2, "height": 4, "width": 4, "text_tokens": 4}}))
    return load_bench_model_config(str(tmp_path / "tiny.yaml"))


def by_label(rows):
    return {r["label"]: r for r in rows}


def test_bench_model_validates_times_measures_fidelity_and_resumes(tmp_path):
    """One row for the model's own attention and one per backend: dense validated against the model (error ~0);
    MoC's measured sparsity equals the analytic estimate; a backend that cannot run here is skipped with the
    reason; fidelity is 0 for dense and > 0 for sparse MoC; 1 of 2 dual-stream blocks was run, so full-depth
    figures are extrapolated (larger than measured); rows carry the environment; a second run re-measures
    nothing."""
    cfg = tiny_config(tmp_path, [{"name": "dense"}, {"name": "moc", "params": {"top_k": 1, "causal": False}},
                                 {"name": "moc", "params": {"impl": "triton"}, "label": "moc-triton"}])
    out = tmp_path / "results.csv"
    rows = by_label(run_bench_model(cfg, out=str(out), log=lambda m: None))
    assert set(rows) == {OWN, "dense", MOC, "moc-triton"}
    own, dense, moc = rows[OWN], rows["dense"], rows[MOC]
    assert own["status"] == dense["status"] == moc["status"] == "ok"
    assert dense["validation_model_err"] <= dense["validation_tol"] and dense["validation_max_err"] <= 1e-5
    assert moc["validation_max_err"] <= moc["validation_tol"] and "validation_model_err" not in moc
    assert dense["attention_layers"] == moc["attention_layers"] == 2  # one dual- and one single-stream block
    assert dense["sparsity"] == 0.0 < moc["sparsity"] < 1.0
    assert moc["sparsity"] == pytest.approx(moc["est_sparsity"])
    assert all(r["model_ms"] > 0 and r["repeats"] == 2 for r in (own, dense, moc))
    assert own["paired_speedup"] == 1.0 and dense["paired_speedup"] > 0 and moc["paired_speedup_iqr"] >= 0
    assert moc["routing_ms"] >= 0 and moc["attention_ms"] > 0
    assert dense["fidelity_rel_l2_max"] <= 1e-6 and dense["fidelity_cos_min"] >= 1 - 1e-9
    assert moc["fidelity_rel_l2_max"] > 1e-3 and moc["fidelity_cos_min"] < 1
    assert set(json.loads(moc["fidelity_layers"])) == {"transformer_blocks.0.attn", "single_transformer_blocks.0.attn"}
    for r in (own, dense, moc):
        assert r["full_depth_layers"] == 3 and r["extrapolated_model_ms"] > r["model_ms"]
    assert moc["extrapolated_attention_ms"] == pytest.approx(moc["attention_ms"] * 3 / 2)
    skipped = rows["moc-triton"]
    assert skipped["status"] == "skipped" and "triton" in skipped["reason"] and "cuda" in skipped["reason"]
    assert all(r["env_code"] and r["env_threads"] for r in rows.values())
    assert len(read_rows(out)) == 4
    assert run_bench_model(cfg, out=str(out), log=lambda m: None) == []  # resumed: everything is done


def test_bench_model_follows_the_stores_resume_policy(tmp_path):
    """A row measured in another environment is re-measured with one notice line, or kept with reuse_foreign;
    retry_skipped re-runs a skipped row."""
    cfg = tiny_config(tmp_path, [{"name": "dense"}, {"name": "moc", "params": {"impl": "triton"}, "label": "tri"}])
    cfg.fidelity = False
    out = tmp_path / "results.csv"
    first = by_label(run_bench_model(cfg, out=str(out), log=lambda m: None))
    store = ResultStore(out)
    store.add({**store.rows[first["dense"]["key"]], "env_torch": "0.0.1"})  # as if copied from another machine
    notes = []
    assert run_bench_model(cfg, out=str(out), policy=ResumePolicy(reuse_foreign=True), log=notes.append) == []
    assert any("keeping" in n and "1 row(s)" in n and "env_torch 0.0.1" in n for n in notes)
    notes.clear()
    again = by_label(run_bench_model(cfg, out=str(out), log=notes.append))
    assert any("re-measuring 1 row(s)" in n for n in notes)
    assert set(again) == {OWN, "dense"} and again["dense"]["env_torch"] == torch.__version__
    retried = by_label(run_bench_model(cfg, out=str(out), policy=ResumePolicy(retry_skipped=True), log=lambda m: None))
    assert set(retried) == {OWN, "tri"} and retried["tri"]["status"] == "skipped"


def test_a_validation_mismatch_is_a_failed_row_and_is_not_timed(tmp_path, monkeypatch):
    """If a layer call differs from its float64 reference the row is failed with the error, and not timed."""
    real = bench_module.masked_reference
    monkeypatch.setattr(bench_module, "masked_reference", lambda *a, **k: real(*a, **k) + 1e-2)
    cfg = tiny_config(tmp_path)
    rows = by_label(run_bench_model(cfg, out=str(tmp_path / "r.csv"), log=lambda m: None))
    for label in ("dense", MOC):
        assert rows[label]["status"] == "failed" and "validation failed" in rows[label]["reason"]
        assert "model_ms" not in rows[label]
    assert rows[OWN]["status"] == "ok"


def test_full_depth_extrapolation_from_per_block_share():
    """model_ms * (1 + sum_k f_k (N_k / n_k - 1)), with the median share per block list; none at full depth or
    when a block list with missing blocks was not measured at all."""
    from mocbench.integrations.diffusers.extrapolate import extrapolate

    fractions = [{"a": 0.5, "b": 0.2}, {"a": 0.4, "b": 0.2}, {"a": 0.6, "b": 0.2}]
    got, why = extrapolate(100.0, fractions, {"a": 2, "b": 1}, {"a": 20, "b": 3})
    assert why == "" and got == pytest.approx(100.0 * (1 + 0.5 * 9 + 0.2 * 2))
    assert extrapolate(100.0, fractions, {"a": 20, "b": 3}, {"a": 20, "b": 3})[0] is None
    none, why = extrapolate(100.0, fractions, {"a": 2, "b": 0}, {"a": 20, "b": 3})
    assert none is None and "['b']" in why


def test_random_weights_are_created_in_the_target_dtype(monkeypatch):
    """No float32 copy of the model is made and cast: parameters are bfloat16 from the start, except the modules
    diffusers keeps in float32 (Wan's norms, time embedder), as from_pretrained would load them."""
    import diffusers

    from mocbench.integrations.diffusers.models import build_transformer

    def no_cast(self, *args, **kwargs):
        if any(isinstance(a, torch.dtype) for a in args) or "dtype" in kwargs:
            raise AssertionError("the model was cast after it was built")
        return original(self, *args, **kwargs)

    original = diffusers.ModelMixin.to
    monkeypatch.setattr(diffusers.ModelMixin, "to", no_cast)
    arch = {"_class_name": "WanTransformer3DModel", "patch_size": [1, 2, 2], "num_attention_heads": 2,
            "attention_head_dim": 12, "in_channels": 4, "out_channels": 4, "text_dim": 8, "freq_dim": 8,
            "ffn_dim": 16, "num_layers": 2}
    model = build_transformer(arch, dtype=torch.bfloat16)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes["blocks.0.attn1.to_q.weight"] == torch.bfloat16
    assert dtypes["blocks.0.norm2.weight"] == dtypes["condition_embedder.time_embedder.linear_1.weight"] == torch.float32
    assert torch.get_default_dtype() == torch.float32  # restored


def test_report_shows_bench_model_rows_in_a_model_table(tmp_path):
    """mocbench report on a bench-model store: a model table with the speed-up vs the model's own attention
    (own row 1.00x), fidelity and the extrapolated full-depth columns; no latency tables of `mocbench bench`."""
    from mocbench.bench.report import build_tables, write_report

    cfg = tiny_config(tmp_path)
    out = tmp_path / "results.csv"
    rows = by_label(run_bench_model(cfg, out=str(out), log=lambda m: None))
    written = write_report(out, tmp_path / "report", figures=False)
    names = {p.name for p in written}
    assert "model.md" in names and "latency.md" not in names
    from mocbench.bench.store import load_table

    table = build_tables(load_table(out))["model"].set_index("backend")
    assert table.loc[OWN, "speed-up"] == "1.00x"
    assert table.loc[MOC, "speed-up"] == f"{rows[MOC]['paired_speedup']:.2f}x"  # median of per-round ratios
    assert table.loc[MOC, "fidelity rel-L2 (max)"] == pytest.approx(rows[MOC]["fidelity_rel_l2_max"])
    assert table.loc[MOC, "layers"] == "2 of 3"
    text = (tmp_path / "report" / "report.md").read_text()
    assert "extrapolated from per-block cost" in text and "full-depth ms (extrapolated)" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the rows written where CUDA is missing")
def test_a_cuda_config_without_cuda_writes_skipped_rows(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.inputs.device = "cuda"
    rows = run_bench_model(cfg, out=str(tmp_path / "r.csv"), log=lambda m: None)
    assert {r["status"] for r in rows} == {"skipped"} and "CUDA is not available" in rows[0]["reason"]


def test_bench_model_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="model.architecture: .*nope.json' does not exist"):
        load_bench_model_config(None, ["model.architecture=nope.json"])
    (tmp_path / "a.json").write_text('{"_class_name": "WanTransformer3DModel"}')
    arch = f"model.architecture={tmp_path / 'a.json'}"
    with pytest.raises(ConfigError, match="inputs.dtype must be one of"):
        load_bench_model_config(None, [arch, "inputs.dtype=float8"])
    with pytest.raises(ConfigError, match=r"backends.0: .*top_k must be >= 0, got -1"):
        load_bench_model_config(None, [arch, "backends=[{name: moc, params: {top_k: -1}}]"])
    with pytest.raises(ConfigError, match="model.num_layers must be >= 0 or null, got -1"):
        load_bench_model_config(None, [arch, "model.num_layers=-1"])


def test_every_shipped_model_config_loads():
    """configs/models/*.yaml: bench-model configs (CPU and GPU) and sample-model configs parse and check."""
    from pathlib import Path

    from mocbench.integrations.diffusers.sample import load_sample_model_config

    folder = Path(__file__).resolve().parents[1] / "configs" / "models"
    names = sorted(p.name for p in folder.glob("*.yaml"))
    assert {"cogvideox_cpu.yaml", "wan2_1_cpu.yaml", "hunyuan_video_cpu.yaml", "cogvideox_gpu.yaml",
            "wan2_1_14b_gpu.yaml", "hunyuan_video_gpu.yaml", "sample_cogvideox.yaml"} <= set(names)
    for name in names:
        if name.startswith("sample_"):
            load_sample_model_config(str(folder / name), ["device=cpu"])
        else:
            cfg = load_bench_model_config(str(folder / name))
            assert cfg.inputs.device == ("cuda" if "_gpu" in name else "cpu"), name
