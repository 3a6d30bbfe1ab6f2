"""Tiny sample folders for the eval tests, written like `mocbench sample` does (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from mocbench.tasks.media import write_mp4
from mocbench.tasks.shapeshots import ShapeShotsConfig, generate

CFG = ShapeShotsConfig(height=16, width=16, frames=4, shots=3, num_entities=2, num_scenes=1, max_entities_per_shot=1,
                       pan_prob=0.0, textures=("solid",), patterns=("plain",))


def write_sample_set(root: Path, *, num: int = 2, seed: int = 0, backend: str = "dense", params: dict | None = None,
                     noise: float = 0.0, edit=None, cfg: ShapeShotsConfig = CFG, checkpoint: str = "") -> Path:
    """Ground-truth ShapeShots stories as the 'generated' videos (plus optional noise / an edit(video, story))."""
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    rng = np.random.default_rng(seed + 99)
    for i in range(num):
        video, story = generate(seed + i, cfg)
        if edit is not None:
            video = edit(video.copy(), story)
        if noise:
            video = np.clip(video + rng.normal(0, noise, video.shape).astype(np.float32), 0, 1)
        mp4 = write_mp4(root / f"sample_{i:03d}.mp4", torch.from_numpy(video) * 2 - 1, scale=4)
        samples.append({"index": i, "noise_seed": seed + i, "captions": story.captions, "mp4": mp4.name,
                        "contact_sheet": f"sample_{i:03d}.png", "ground_truth": story.metadata()})
    meta = {"checkpoint": checkpoint, "task": "multi_shot", "backend": backend, "backend_params": params or {},
            "sampler": "euler", "steps": 3, "seed": seed, "num": num, "samples": samples}
    (root / "metadata.json").write_text(json.dumps(meta))
    return root
