"""``mocbench sample``: checkpoint (+ backend overrides) -> mp4s, PNG contact sheets, metadata JSON.

Captions come from fresh ShapeShots stories (the ``sample`` split, seeded by ``--seed``) or, for a
folder-trained model, from the held-out clips. Each contact sheet shows one row per shot: the
ground-truth frames on the left, the generated frames on the right. Same checkpoint + seed +
backend give identical videos (the noise of sample ``i`` is seeded with ``seed + i``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import torch

from mocbench.config import ConfigError
from mocbench.errors import check_output_dir, path_error, require_int
from mocbench.tasks.consistency import summarize
from mocbench.tasks.data import ShapeShotsDataset, collate
from mocbench.tasks.lightning_module import VideoTask, load_task
from mocbench.tasks.media import contact_sheet, stack_sheets, write_mp4, write_png
from mocbench.tasks.train import build_datamodule, shapes_config, torch_threads

SAMPLE_TIME_KEYS = ("backend.", "sample.")


def check_sample_overrides(overrides: list[str]) -> None:
    for o in overrides:
        key = o.split("=", 1)[0]
        if "=" not in o or not key.startswith(SAMPLE_TIME_KEYS):
            raise ConfigError(f"{key}: only backend.* and sample.* keys can change at sampling time, got {o!r}")


def reference_batch(task: VideoTask, num: int, seed: int) -> dict:
    """``num`` ground-truth samples with captions for conditioning (and for the sheets)."""
    cfg = task.cfg
    if cfg.data.source == "folder":
        dm = build_datamodule(cfg)
        dm.setup()
        items = [dm.val_set[i % len(dm.val_set)] for i in range(num)]
        for item in items:  # re-tokenize with the checkpoint's vocabulary
            item["text"] = task.tokenizer.encode_shots(item["captions"], cfg.data.text_tokens)
        return collate(items)
    ds = ShapeShotsDataset(shapes_config(cfg), task.tokenizer, cfg.data.text_tokens, num, seed=seed, split="sample",
                           cache=False)
    return collate([ds[i] for i in range(num)])


def sample_checkpoint(checkpoint: str, out: str | Path, *, overrides: list[str] | None = None,
                      num: int | None = None, seed: int | None = None, steps: int | None = None,
                      sampler: str | None = None, guidance: float | None = None, batch_size: int = 8,
                      write_files: bool = True, on_load: Callable[[VideoTask], None] | None = None,
                      ) -> tuple[torch.Tensor, list[Path]]:
    """Sample ``num`` videos; returns ``(videos (N, S, F, 3, H, W) in [-1, 1], written paths)``.

    ``on_load(task)`` runs after the checkpoint is loaded and before sampling (e.g. to wrap the
    attention backends with a recorder)."""
    overrides = list(overrides or [])
    check_sample_overrides(overrides)
    for name, value in (("num", num), ("steps", steps)):
        if value is not None:
            require_int(f"--{name}", value)
    if guidance is not None and not math.isfinite(guidance):
        raise ConfigError(f"--guidance must be a finite number (1: no guidance), got {guidance}")
    if write_files:
        check_output_dir(out, "--out")
    task = load_task(checkpoint, overrides)
    if on_load is not None:
        on_load(task)
    with torch_threads(task.cfg.threads):
        return _sample(task, checkpoint, out, num, seed, steps, sampler, guidance, batch_size, write_files)


def _sample(task: VideoTask, checkpoint, out, num, seed, steps, sampler, guidance, batch_size, write_files):
    task.eval()
    if torch.cuda.is_available():
        task.cuda()
    sc, d = task.cfg.sample, task.cfg.data
    num = sc.num if num is None else num
    seed = sc.seed if seed is None else seed
    steps = sc.steps if steps is None else steps
    sampler = sc.sampler if sampler is None else sampler
    guidance = sc.guidance if guidance is None else guidance
    ref = reference_batch(task, num, seed)
    videos = []
    for start in range(0, num, batch_size):
        text = ref["text"][start:start + batch_size]
        videos.append(task.generate(text, frames=d.frames, height=d.height, width=d.width, seed=seed + start,
                                    steps=steps, sampler=sampler, guidance=guidance).cpu())
    videos = torch.cat(videos)
    if not write_files:
        return videos, []
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise path_error(exc, "--out") from None
    written, sheets, meta = [], [], []
    for i in range(num):
        mp4 = write_mp4(out / f"sample_{i:03d}.mp4", videos[i], scale=sc.scale)
        sheet = contact_sheet([ref["video"][i], videos[i]], scale=sc.scale)
        sheets.append(sheet)
        png = write_png(out / f"sample_{i:03d}.png", sheet)
        written += [mp4, png]
        meta.append({"index": i, "noise_seed": seed + i, "captions": ref["captions"][i], "mp4": mp4.name,
                     "contact_sheet": png.name, "ground_truth": ref["meta"][i]})
    written.append(write_png(out / "contact_sheet.png", stack_sheets(sheets)))
    info = {"checkpoint": str(checkpoint), "task": task.cfg.task, "backend": task.cfg.backend.name,
            "backend_params": dict(task.cfg.backend.params), "sampler": sampler, "steps": steps, "guidance": guidance,
            "seed": seed, "num": num, "ema": task.ema is not None,
            "layout": task.model.layout_for(d.shots, d.frames, d.height, d.width, d.text_tokens).describe(),
            "sheet": "one row per shot; left: ground-truth frames, right: generated frames", "samples": meta}
    if task.cfg.data.source == "shapeshots":
        metas = ref["meta"][:num]
        info["consistency"] = {"generated": summarize(list(videos), metas),
                               "ground_truth": summarize(list(ref["video"][:num]), metas),
                               "about": "mocbench.tasks.consistency: scene-colour histogram L1 between shots "
                                        "(same vs different scene id) and dominant entity colour match "
                                        "(same vs different single entity)"}
    meta_path = out / "metadata.json"
    meta_path.write_text(json.dumps(info, indent=2))
    written.append(meta_path)
    return videos, written
