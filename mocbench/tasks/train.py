"""``mocbench train``: config -> data module + task + ``lightning.Trainer`` -> checkpoints and logs.

Outputs under ``out_dir``: ``checkpoints/last.ckpt`` (plus periodic ones), ``logs/`` (CSV metrics)
and ``config.yaml`` (the resolved config). ``resume=last`` (or a path) continues a run;
``init_from=CKPT`` starts a new run from a checkpoint's weights, e.g. a dense-trained model
fine-tuned with ``backend.name=moc``.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf

from mocbench.errors import path_error
from mocbench.tasks.checkpoint import check_fits, model_state, read_checkpoint
from mocbench.tasks.config import TRAINER_DEFAULTS, TaskConfig, to_dict
from mocbench.tasks.data import ShapeShotsDataModule, SingleShotDataModule
from mocbench.tasks.folder import FolderDataModule
from mocbench.tasks.lightning_module import VideoTask, build_task
from mocbench.tasks.shapeshots import ShapeShotsConfig


def shapes_config(cfg: TaskConfig) -> ShapeShotsConfig:
    d = cfg.data
    return ShapeShotsConfig(height=d.height, width=d.width, frames=d.frames, shots=d.shots,
                            num_entities=d.num_entities, num_scenes=d.num_scenes,
                            max_entities_per_shot=d.max_entities_per_shot, pan_prob=d.pan_prob,
                            shapes=tuple(d.shapes), textures=tuple(d.textures), patterns=tuple(d.patterns),
                            sizes=tuple(d.sizes), task=d.task)


def build_datamodule(cfg: TaskConfig) -> L.LightningDataModule:
    d = cfg.data
    if d.source == "folder":
        return FolderDataModule(d.root, index=d.index, shots=d.shots, frames=d.frames, height=d.height, width=d.width,
                                text_tokens=d.text_tokens, batch_size=d.batch_size, num_workers=d.num_workers,
                                seed=d.seed)
    cls = SingleShotDataModule if cfg.task == "single_shot" else ShapeShotsDataModule
    return cls(shapes_config(cfg), text_tokens=d.text_tokens, train_size=d.train_size, val_size=d.val_size,
               batch_size=d.batch_size, num_workers=d.num_workers, seed=d.seed)


def trainer_kwargs(cfg: TaskConfig) -> dict:
    """``TRAINER_DEFAULTS`` <- ``trainer.*``; precision bf16-mixed on CUDA unless set; clipping from optim."""
    kw = {**TRAINER_DEFAULTS, **dict(cfg.trainer)}
    if "precision" not in kw:
        on_gpu = torch.cuda.is_available() and kw.get("accelerator", "auto") in ("auto", "gpu", "cuda")
        kw["precision"] = "bf16-mixed" if on_gpu else "32-true"
    kw.setdefault("gradient_clip_val", cfg.optim.grad_clip or None)
    return kw


def init_weights_from(task: VideoTask, ckpt: dict, path: str) -> None:
    """Copy the model weights of checkpoint ``ckpt`` (read from ``path``) into ``task`` (architectures must match)."""
    weights = model_state(ckpt)
    check_fits(task.model, weights, "init_from: checkpoint", path)
    task.model.load_state_dict(weights)
    if task.ema is not None:
        task.ema.load_state_dict(weights)


def resolve_resume(cfg: TaskConfig) -> tuple[str, dict] | None:
    """The checkpoint ``resume`` names (``last``: ``out_dir/checkpoints/last.ckpt``) and its contents,
    checked to be a readable mocbench checkpoint; None without ``resume``."""
    if cfg.resume is None:
        return None
    path = Path(cfg.out_dir) / "checkpoints" / "last.ckpt" if cfg.resume == "last" else Path(cfg.resume)
    return str(path), read_checkpoint(path, "resume: checkpoint")


@contextmanager
def torch_threads(n: int | None):
    """Run with ``n`` torch CPU threads (None: unchanged), restoring the previous count."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(cfg: TaskConfig, *, callbacks: list | None = None) -> tuple[L.Trainer, VideoTask, Path]:
    """Fit ``cfg``; returns (trainer, task, path of the final checkpoint)."""
    with torch_threads(cfg.threads):
        return _train(cfg, callbacks)


def _train(cfg: TaskConfig, callbacks: list | None) -> tuple[L.Trainer, VideoTask, Path]:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # checkpoints are read (and refused with the file named) before anything is written
    init = read_checkpoint(cfg.init_from, "init_from: checkpoint") if cfg.init_from else None
    resume = resolve_resume(cfg)
    out = Path(cfg.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise path_error(exc, "out_dir") from None
    OmegaConf.save(OmegaConf.create(to_dict(cfg)), out / "config.yaml")
    dm = build_datamodule(cfg)
    task = build_task(cfg, dm.tokenizer.words)
    if init is not None:
        init_weights_from(task, init, cfg.init_from)
    ckpt_path = None
    if resume is not None:
        ckpt_path = resume[0]
        check_fits(task.model, model_state(resume[1]), "resume: checkpoint", ckpt_path)
    del init, resume  # Lightning reads the resume checkpoint again; do not hold two copies
    ckpt_dir = out / "checkpoints"
    kw = trainer_kwargs(cfg)
    every = max(1, int(kw.get("max_steps") or 1000) // 4) if kw.get("max_steps", -1) > 0 else 1000
    checkpointing = L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, filename="{step}", save_last=True,
                                                         every_n_train_steps=every, save_top_k=1)
    logger = L.pytorch.loggers.CSVLogger(str(out), name="logs")
    trainer = L.Trainer(default_root_dir=str(out), logger=kw.pop("logger", logger),
                        callbacks=[checkpointing, *(callbacks or [])], **kw)
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path)
    final = ckpt_dir / "last.ckpt"
    trainer.save_checkpoint(final)
    return trainer, task, final
