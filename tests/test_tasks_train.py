"""Lightning training and sampling end to end at tiny sizes: checkpoints reload, resume, sampling
is deterministic and writes mp4 / PNG / JSON, a dense-trained checkpoint samples with MoC and
fine-tunes with MoC via ``init_from``, and the CLI reports bad keys."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mocbench.cli import main
from mocbench.config import ConfigError
from mocbench.tasks.config import load_task_config
from mocbench.tasks.lightning_module import load_task
from mocbench.tasks.sample import sample_checkpoint
from mocbench.tasks.train import train

TINY = ["data.height=8", "data.width=8", "data.frames=2", "data.shots=2", "data.text_tokens=18", "data.train_size=8",
        "data.batch_size=4", "model.dim=32", "model.depth=2", "model.heads=2", "model.max_frames=4", "threads=1",
        "trainer.max_steps=3", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "sample.steps=3", "sample.num=2", "sample.scale=2", "optim.warmup_steps=2"]


def tiny_cfg(out_dir, *extra):
    return load_task_config(None, [*TINY, f"out_dir={out_dir}", *extra])


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dense")
    trainer, task, ckpt = train(tiny_cfg(out))
    return trainer, task, ckpt


def test_train_writes_checkpoint_and_logs_and_reloads(dense_run):
    trainer, task, ckpt = dense_run
    assert trainer.global_step == 3 and ckpt.is_file()
    metrics = next(ckpt.parent.parent.glob("logs/version_*/metrics.csv")).read_text()
    assert "train/loss" in metrics
    loaded = load_task(str(ckpt))
    for (k, a), (_, b) in zip(task.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    g = torch.Generator().manual_seed(0)
    x, t, ids = torch.randn(1, 2, 2, 3, 8, 8, generator=g), torch.rand(1, generator=g), torch.randint(0, 9, (1, 2, 18))
    task.eval()
    assert torch.equal(task.model(x, t, ids), loaded.model(x, t, ids))


def test_resume_continues_the_step_count(dense_run, tmp_path):
    _, _, ckpt = dense_run
    shutil.copy(ckpt, tmp_path / "start.ckpt")
    trainer, _, _ = train(tiny_cfg(tmp_path / "run", f"resume={tmp_path / 'start.ckpt'}", "trainer.max_steps=5"))
    assert trainer.global_step == 5
    with pytest.raises(ConfigError, match="resume: checkpoint .* does not exist"):
        train(tiny_cfg(tmp_path / "nothing", "resume=last"))


def test_sampling_is_deterministic_and_writes_mp4_png_json(dense_run, tmp_path):
    _, _, ckpt = dense_run
    a, files = sample_checkpoint(str(ckpt), tmp_path / "a", num=2, seed=3)
    b, _ = sample_checkpoint(str(ckpt), tmp_path / "b", num=2, seed=3, write_files=False)
    c, _ = sample_checkpoint(str(ckpt), tmp_path / "c", num=2, seed=4, write_files=False)
    assert a.shape == (2, 2, 2, 3, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
    names = sorted(p.name for p in files)
    assert names == ["contact_sheet.png", "metadata.json", "sample_000.mp4", "sample_000.png", "sample_001.mp4",
                     "sample_001.png"]
    meta = json.loads((tmp_path / "a" / "metadata.json").read_text())
    assert meta["backend"] == "dense" and len(meta["samples"]) == 2 and meta["samples"][0]["captions"][0].startswith("shot 0")
    assert "cast" in meta["samples"][0]["ground_truth"]
    assert meta["consistency"]["ground_truth"]["same_scene_l1"]["pairs"] + meta["consistency"]["ground_truth"]["diff_scene_l1"]["pairs"] == 2
    heun, _ = sample_checkpoint(str(ckpt), tmp_path / "h", num=1, seed=3, sampler="heun", guidance=2.0,
                                write_files=False)
    assert torch.isfinite(heun).all()


def test_dense_trained_checkpoint_samples_with_moc_and_fixed_sparse(dense_run, tmp_path):
    _, _, ckpt = dense_run
    dense, _ = sample_checkpoint(str(ckpt), tmp_path, num=2, seed=1, write_files=False)
    moc, _ = sample_checkpoint(str(ckpt), tmp_path, num=2, seed=1, write_files=False,
                               overrides=["backend.name=moc", "backend.params.top_k=1", "backend.params.chunking=frame"])
    moc2, _ = sample_checkpoint(str(ckpt), tmp_path, num=2, seed=1, write_files=False,
                                overrides=["backend.name=moc", "backend.params.top_k=1", "backend.params.chunking=frame"])
    assert torch.isfinite(moc).all() and torch.equal(moc, moc2)
    full, _ = sample_checkpoint(str(ckpt), tmp_path, num=2, seed=1, write_files=False,
                                overrides=["backend.name=moc", "backend.params.top_k=99", "backend.params.causal=false"])
    assert torch.allclose(full, dense, atol=1e-4), "MoC routing every chunk must reproduce dense sampling"
    local, _ = sample_checkpoint(str(ckpt), tmp_path, num=1, seed=1, write_files=False, overrides=["backend.name=shot_local"])
    assert torch.isfinite(local).all()
    with pytest.raises(ConfigError, match="data.height: only backend.. and sample.. keys"):
        sample_checkpoint(str(ckpt), tmp_path, overrides=["data.height=16"])


def test_finetune_a_dense_checkpoint_with_moc_via_init_from(dense_run, tmp_path):
    _, dense_task, ckpt = dense_run
    cfg = tiny_cfg(tmp_path, f"init_from={ckpt}", "backend.name=moc", "backend.params.top_k=1",
                   "backend.params.p_drop_off=0.1", "trainer.max_steps=2", "optim.ema_decay=0.5")
    trainer, task, final = train(cfg)
    assert trainer.global_step == 2 and task.model.backend.name == "moc"
    loaded = load_task(str(final))
    assert loaded.cfg.backend.name == "moc" and loaded.ema is not None
    assert any(not torch.equal(a, b) for a, b in zip(loaded.model.parameters(), dense_task.model.parameters()))
    with pytest.raises(ConfigError, match="init_from: checkpoint .* does not exist"):
        train(tiny_cfg(tmp_path / "x", "init_from=/no/such.ckpt"))


def test_single_shot_task_trains(tmp_path):
    trainer, task, _ = train(tiny_cfg(tmp_path, "task=single_shot", "data.shots=1", "trainer.max_steps=2"))
    assert type(task).__name__ == "SingleShotVideoTask" and trainer.global_step == 2


def test_cli_train_sample_and_bad_key(dense_run, tmp_path, capsys):
    _, _, ckpt = dense_run
    assert main(["sample", str(ckpt), "backend.name=moc", "backend.params.top_k=1", "--num", "1", "--seed", "2",
                 "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "sample_000.mp4").stat().st_size > 0
    assert main(["train", "configs/task/quickstart_multishot.yaml", "model.dimm=3"]) == 2
    assert "model.dimm" in capsys.readouterr().err
    assert main(["train", "configs/task/quickstart_multishot.yaml", "data.height=18"]) == 2
    assert "data.height: 18 px is not a multiple of model.patch_size=4" in capsys.readouterr().err


def test_train_and_sample_on_a_folder_of_mp4_clips(tmp_path):
    """data.source=folder: your own mp4 + JSONL clips train and sample like ShapeShots."""
    from test_tasks_data import _write_clip

    rows = []
    for i, colours in enumerate([[(230, 20, 20), (20, 20, 230)], [(20, 230, 20), (230, 230, 20)]]):
        _write_clip(tmp_path / f"c{i}.mp4", colours, frames_each=4, size=16)
        rows.append({"video": f"c{i}.mp4", "captions": [f"room {i} first", f"room {i} second"], "shots": [[0, 4], [4, 8]]})
    (tmp_path / "clips.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = tiny_cfg(tmp_path / "run", "data.source=folder", f"data.root={tmp_path}", "data.batch_size=1",
                   "trainer.max_steps=2")
    trainer, task, ckpt = train(cfg)
    assert trainer.global_step == 2 and "room" in task.tokenizer.words
    videos, _ = sample_checkpoint(str(ckpt), tmp_path / "s", num=1, seed=0)
    assert videos.shape == (1, 2, 2, 3, 8, 8) and (tmp_path / "s" / "metadata.json").is_file()
