"""A data module for your own clips: a folder of mp4 files plus a JSONL index.

Each line of ``<root>/<index>`` (default ``clips.jsonl``) describes one sample::

    {"video": "walk.mp4", "captions": ["a man walks in", "he sits down"], "shots": [[0, 40], [40, 96]]}

``shots`` are ``[start, end)`` frame ranges of the file, one per caption. Every shot is resampled
to ``frames`` evenly spaced frames and resized to ``height x width``; a sample must have exactly
``shots`` shots (the model's layout is fixed per run). The tokenizer is built from the captions.
Batches have the ShapeShots format (see :mod:`mocbench.tasks.data`).
"""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v2 as imageio
import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from mocbench.errors import read_text
from mocbench.tasks.data import collate
from mocbench.tasks.text import Tokenizer


def read_index(root: Path, index: str, shots: int) -> list[dict]:
    """Parse and check the JSONL index; errors name the file, line and field."""
    path = root / index
    rows = []
    for n, line in enumerate(read_text(path, "clip index").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
        for key in ("video", "captions", "shots"):
            if key not in row:
                raise ValueError(f"{where}: missing field {key!r}")
        if len(row["captions"]) != len(row["shots"]):
            raise ValueError(f"{where}: {len(row['captions'])} captions but {len(row['shots'])} shots")
        if len(row["shots"]) != shots:
            raise ValueError(f"{where}: has {len(row['shots'])} shots, the config asks for shots={shots}")
        for s, (a, b) in enumerate(row["shots"]):
            if not 0 <= a < b:
                raise ValueError(f"{where}: shot {s} range [{a}, {b}) is empty or negative")
        if not (root / row["video"]).is_file():
            raise ValueError(f"{where}: video file {row['video']!r} not found under {root}")
        rows.append(row)
    if not rows:
        raise ValueError(f"clip index {str(path)!r} has no samples")
    return rows


def read_video(path: Path) -> np.ndarray:
    """All frames of an mp4 as uint8 ``(N, H, W, 3)``."""
    with imageio.get_reader(str(path), format="FFMPEG") as reader:
        return np.stack([np.asarray(f)[..., :3] for f in reader])


class FolderDataset(Dataset):
    def __init__(self, root: Path, rows: list[dict], tokenizer: Tokenizer, *, frames: int, height: int,
                 width: int, text_tokens: int):
        self.root, self.rows, self.tokenizer = root, rows, tokenizer
        self.frames, self.height, self.width, self.text_tokens = frames, height, width, text_tokens

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        raw = read_video(self.root / row["video"])
        shots = []
        for a, b in row["shots"]:
            b = min(b, len(raw))
            if a >= b:
                raise ValueError(f"{row['video']}: shot [{a}, {b}) is past the end ({len(raw)} frames)")
            idx = np.linspace(a, b - 1, self.frames).round().astype(int)
            clip = torch.from_numpy(raw[idx]).permute(0, 3, 1, 2).float() / 255.0  # (F, 3, h, w)
            shots.append(F.interpolate(clip, size=(self.height, self.width), mode="area"))
        video = torch.stack(shots) * 2 - 1
        meta = {"video": row["video"], "shots": row["shots"], "captions": row["captions"]}
        return {"video": video, "text": self.tokenizer.encode_shots(row["captions"], self.text_tokens),
                "captions": list(row["captions"]), "meta": meta}


class FolderDataModule(L.LightningDataModule):
    """Your clips: ``root/index`` JSONL + mp4 files; ``val_fraction`` of samples held out (at least 1
    when there are 2 or more)."""

    def __init__(self, root: str, *, index: str = "clips.jsonl", shots: int = 1, frames: int = 8, height: int = 32,
                 width: int = 32, text_tokens: int = 16, batch_size: int = 4, num_workers: int = 0,
                 val_fraction: float = 0.1, seed: int = 0):
        super().__init__()
        self.root = Path(root)
        self.rows = read_index(self.root, index, shots)
        self.tokenizer = Tokenizer.from_texts(c for r in self.rows for c in r["captions"])
        self.kw = {"frames": frames, "height": height, "width": width, "text_tokens": text_tokens}
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        n_val = min(len(self.rows) - 1, max(1, round(val_fraction * len(self.rows)))) if len(self.rows) > 1 else 0
        self.train_rows, self.val_rows = self.rows[n_val:], self.rows[:n_val] or self.rows[:1]

    def setup(self, stage: str | None = None) -> None:
        self.train_set = FolderDataset(self.root, self.train_rows, self.tokenizer, **self.kw)
        self.val_set = FolderDataset(self.root, self.val_rows, self.tokenizer, **self.kw)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, batch_size=min(self.batch_size, len(self.train_set)), shuffle=True,
                          generator=g, drop_last=True, collate_fn=collate, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, collate_fn=collate, num_workers=self.num_workers)
