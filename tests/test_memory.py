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
    assert "entity recall" in printed and "frame_window" in printed and "ETA" in printed
    for name in ("memory.csv", "memory.md", "recall_vs_sparsity.png", "contact_sheet.png"):
        assert (out / name).stat().st_size > 0, name
    df = load_table(out / "memory.csv").set_index("label")
    assert set(df.status) == {"ok"}
    assert df.loc["ground truth", "entity_recall"] == 1.0
    assert df.loc["frame_window", "training"] == "swap" and df.loc["moc ft", "training"] == "finetuned"
    assert df.loc["frame_window", "sparsity"] > 0 and df.loc["dense", "sparsity"] == 0
    assert len(str(df.loc["dense", "loss_by_shot"]).split()) == 3
    assert 0 <= df.loc["moc ft", "routed_to_source"] <= 1
    a = np.load(df.loc["dense", "samples_file"])["videos"]
    assert a.shape == (4, 3, 2, 3, 16, 16)
    assert main(["memory", path, *ov, "--out", str(out)]) == 0  # resumes: nothing is trained or sampled again
    assert "done earlier" in capsys.readouterr().out


def test_tiny_binding_run_scores_the_captioned_entity_with_a_distractor_column(tmp_path, capsys, _one_thread):
    """Binding stories (captions name the returning entity): the ground truth recalls it with no distractor,
    and the table gains a distractor column; text-leaking rows carry their note."""
    import yaml

    from mocbench.bench.store import load_table
    from mocbench.cli import main

    path = tmp_path / "bind.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny_binding", "runs": {"dense": {"backend": {"name": "dense"}}},
        "rows": [{"label": "dense", "run": "dense"},
                 {"label": "shot_local", "run": "dense", "backend": {"name": "shot_local"},
                  "note": "leaks through text"},
                 {"label": "moc chunk", "run": "dense",
                  "backend": {"name": "moc", "params": {**MOC["params"], "local_anchor": "chunk"}}}],
        "eval": {"stories": 4, "steps": 2, "loss_stories": 2, "sheet_stories": 0}}))
    ov = [o for o in TASK if not o.startswith(("task.data.task", "task.data.shots", "task.data.text_tokens"))]
    ov += ["task.data.task=binding", "task.data.shots=4", "task.data.num_entities=2", "task.data.text_tokens=2"]
    with pytest.raises(ConfigError, match="task.data.text_tokens: binding captions"):
        load_memory_config(str(path), [*ov, "task.data.text_tokens=1"])
    out = tmp_path / "out"
    assert main(["memory", str(path), *ov, "--out", str(out)]) == 0
    assert "distract" in capsys.readouterr().out
    df = load_table(out / "memory.csv").set_index("label")
    gt = df.loc["ground truth"]
    assert gt["entity_recall"] == 1.0 and gt["distractor"] == 0.0 and gt["story_kind"] == "binding"
    assert gt["pairs"] == 4 * 2  # 2 introduction shots, 2 returning shots per story
    md = (out / "memory.md").read_text()
    assert "distractor [95% CI]" in md and "shot_local (leaks through text)" in md
    assert 0 < df.loc["shot_local", "sparsity"] < df.loc["moc chunk", "sparsity"] < 1
    assert 0 <= df.loc["moc chunk", "routed_to_source"] <= 1 and 0 < df.loc["moc chunk", "routed_to_source_uniform"] < 1


@pytest.mark.parametrize("local_anchor", ["shot", "chunk"])
def test_uniform_routing_share_of_shot_0_matches_counting_candidates(local_anchor):
    """Causal top-1 over 8-token chunks, two per 16-token shot: a query of shot a >= 1 has the 2a chunks of
    earlier shots as candidates (plus, under the chunk anchor, its own shot's first chunk when it sits in the
    second), 2 of them in shot 0."""
    from mocbench.config import BackendConfig
    from mocbench.memory.runner import source_uniform
    from mocbench.tasks.config import load_task_config
    from mocbench.tasks.lightning_module import build_task
    from mocbench.tasks.shapeshots import vocabulary
    from mocbench.tasks.train import shapes_config

    S = 5
    cfg = load_task_config(None, [o.removeprefix("task.") for o in TASK] + [f"data.shots={S}"])
    task = build_task(cfg, vocabulary(shapes_config(cfg)))
    backend = BackendConfig(name="moc", params={**MOC["params"], "local_anchor": local_anchor})
    scored, sources = np.arange(S) >= 1, np.arange(S) == 0
    a = np.arange(1, S, dtype=np.float64)
    expect = (1 / a).mean() if local_anchor == "shot" else ((1 / a + 2 / (2 * a + 1)) / 2).mean()
    assert source_uniform(task, backend, scored, sources) == pytest.approx(expect)
    assert source_uniform(task, BackendConfig(name="frame_window", params={"window": 0}), scored, sources) is None


def test_train_progress_prints_first_step_then_at_most_every_interval_and_the_last():
    """Step, mean loss since the previous line, speed and ETA; a resumed run counts from its checkpoint."""
    from types import SimpleNamespace

    from mocbench.memory.progress import TrainProgress

    lines: list[str] = []
    cb = TrainProgress("  [train 1/1] dense:", lines.append, interval_s=3600)
    trainer = SimpleNamespace(global_step=100, max_steps=110, is_global_zero=True)
    cb.on_train_start(trainer, None)
    for step in range(101, 111):
        trainer.global_step = step
        cb.on_train_batch_end(trainer, None, {"loss": torch.tensor(float(step))}, None, step)
    assert len(lines) == 2, lines
    assert lines[0].startswith("  [train 1/1] dense: step 101/110 (92%)  loss 101.0000") and "ETA" in lines[0]
    assert lines[1].startswith("  [train 1/1] dense: step 110/110 (100%)  loss 106.0000") and "done in" in lines[1]
    with pytest.raises(ValueError, match="interval_s must be > 0, got 0"):
        TrainProgress("x", print, interval_s=0)
