"""End to end on a 3-step model: `mocbench paper` trains, samples every backend with the same seeds,
evaluates (val_loss deterministic, cost analytic) and writes a filled table and a contact sheet."""

from __future__ import annotations

import pytest
import yaml

from mocbench.bench.store import load_table
from mocbench.cli import main
from mocbench.eval.val_loss import validation_loss

TINY = ["data.height=8", "data.width=8", "data.frames=3", "data.shots=2", "data.text_tokens=18", "data.train_size=8",
        "data.batch_size=4", "data.val_size=4", "model.dim=32", "model.depth=2", "model.heads=2", "model.max_frames=4",
        "threads=1", "trainer.max_steps=3", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "sample.steps=2", "sample.scale=4", "optim.warmup_steps=2"]


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    cfg = {"name": "tiny", "table": "paper2", "scale": "cpu",
           "scales": {"cpu": {"task_config": "configs/task/quickstart_multishot.yaml", "task_overrides": TINY,
                              "out_dir": str(root / "run"), "results_dir": str(root / "results"), "num": 2}},
           "backends": [{"name": "dense"}, {"name": "moc", "params": {"top_k": 1}}],
           "evaluators": ["fidelity", "val_loss", "vbench_proxy", "memory", "cost"]}
    path = root / "paper.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["paper", str(path)]) == 0
    return root


def test_paper_driver_writes_a_filled_table(paper_run):
    md = (paper_run / "results" / "paper2.md").read_text()
    # moc samples the dense checkpoint's weights: a swap, marked and footnoted
    assert "| dense |" in md and "| moc(top_k=1) § |" in md and "swapped in without training (moc(top_k=1))" in md
    assert (paper_run / "results" / "contact_sheet_dense_vs_moc.png").stat().st_size > 0
    df = load_table(paper_run / "run" / "eval.csv")
    assert set(df.status) == {"ok"}
    cost = df[df.evaluator == "cost"].set_index("label")
    assert cost.loc["dense", "sparsity"] == 0 and cost.loc["moc(top_k=1)", "sparsity"] > 0
    assert (cost["latency_s_per_video"] > 0).all()


def test_val_loss_is_deterministic_given_checkpoint_backend_and_noise_seed(paper_run):
    ckpt = paper_run / "run" / "train" / "checkpoints" / "last.ckpt"
    a = validation_loss(ckpt, "dense", {})
    assert validation_loss(ckpt, "dense", {}) == a
    assert validation_loss(ckpt, "dense", {}, noise_seed=7)["val_loss"] != a["val_loss"]
    assert a["val_videos"] == 4 and set(a) >= {"val_loss_t0.1", "val_loss_t0.9"}
    # (the 3-step model's sampling weights still have DiT's zero-initialised attention gates, so backends tie here)
    with pytest.raises(ValueError, match="nope.ckpt.*does not exist"):
        validation_loss(paper_run / "nope.ckpt", "dense", {})
