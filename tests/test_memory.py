"""``mocbench memory``: config errors name the key, a tiny end-to-end run writes every output with
the same stories for every row, labels trained / finetuned / swap rows, and a re-run resumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mocbench.config import ConfigError
from mocbench.memory.config import load_memory_config, row_training, run_order

TASK = ["task.data.task=recall", "task.data.shots=3", "task.data.frames=2", "task.data.text_tokens=0",
        "task.data.train_size=8", "task.data.val_size=2", "task.data.batch_size=4", "task.model.dim=16",
        "task.model.depth=1", "task.model.heads=2", "task.model.temporal_patch=2", "task.threads=1",
        "task.trainer.max_steps=2", "task.trainer.enable_progress_bar=false", "task.trainer.log_every_n_steps=1"]
MOC = {"name": "moc", "params": {"top_k": 1, "chunking": "tokens:8", "causal": True}}


def _cfg(tmp_path, extra=()):
    import yaml

    path = tmp_path / "mem.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny", "runs": {"dense": {"backend": {"name": "dense"}},
                                 "moc_ft": {"backend": MOC, "init_from": "dense"}},
        "rows": [{"label": "dense", "run": "dense"},
                 {"label": "frame_window", "run": "dense", "backend": {"name": "frame_window", "params": {"window": 0}}},
                 {"label": "moc ft", "run": "moc_ft"}],
        "eval": {"stories": 4, "steps": 2, "loss_stories": 2, "sheet_stories": 1}}))
    return str(path), [*TASK, *extra]


def test_config_errors_name_the_key(tmp_path):
    path, ov = _cfg(tmp_path)
    cfg = load_memory_config(path, ov)
    assert run_order(cfg) == ["dense", "moc_ft"]
    assert [row_training(cfg, r) for r in cfg.rows] == ["trained", "swap", "finetuned"]
    for bad, match in ((["runs.moc_ft.init_from=nope"], "runs.moc_ft.init_from: no run named 'nope'"),
                       (["runs.dense.init_from=moc_ft"], "cycle"),
                       (["reference=moc"], "reference: no row labelled 'moc'"),
                       (["task.data.task=story"], "task.data.task"),
                       (["eval.stories=1"], "eval.stories: must be >= 2"),
                       (["runs.dense.backend.params.window=3"], "runs.dense.backend.params")):
        with pytest.raises(ConfigError, match=match):
            load_memory_config(path, [*ov, *bad])


@pytest.fixture
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_tiny_memory_run_writes_table_figure_sheet_and_resumes(tmp_path, capsys, _one_thread):
    from mocbench.bench.store import load_table
    from mocbench.cli import main

    path, ov = _cfg(tmp_path)
    out = tmp_path / "out"
    assert main(["memory", path, *ov, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "entity recall" in printed and "| frame_window" in printed
    for name in ("memory.csv", "memory.md", "recall_vs_sparsity.png", "contact_sheet.png"):
        assert (out / name).stat().st_size > 0, name
    df = load_table(out / "memory.csv").set_index("label")
    assert set(df.status) == {"ok"}
    assert df.loc["ground truth", "entity_recall"] == 1.0
    assert df.loc["frame_window", "training"] == "swap" and df.loc["moc ft", "training"] == "finetuned"
    assert df.loc["frame_window", "sparsity"] > 0 and df.loc["dense", "sparsity"] == 0
    assert len(str(df.loc["dense", "loss_by_shot"]).split()) == 3
    assert 0 <= df.loc["moc ft", "routed_to_shot0"] <= 1
    a = np.load(df.loc["dense", "samples_file"])["videos"]
    assert a.shape == (4, 3, 2, 3, 16, 16)
    assert main(["memory", path, *ov, "--out", str(out)]) == 0  # resumes: nothing is trained or sampled again
    assert "done earlier" in capsys.readouterr().out
