"""Lightning data modules over ShapeShots: single-shot clips and multi-shot stories.

A batch is a dict: ``video`` float ``(B, S, F, 3, H, W)`` in ``[-1, 1]``, ``text`` int64 ``(B, S, T)``
caption ids, ``captions`` (list of lists of str) and ``meta`` (list of per-sample dicts with the
cast, scenes and which entity is where in which shot). Sample ``i`` of a split is the story of
seed ``base + i``, with train / val / sample splits in disjoint seed ranges, so every run and
every worker sees the same data. Single-shot clips are one-shot stories.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mocbench.tasks.shapeshots import ShapeShotsConfig, generate, vocabulary
from mocbench.tasks.text import Tokenizer

SPLIT_OFFSETS = {"train": 0, "val": 10_000_000, "sample": 20_000_000}


def collate(items: list[dict]) -> dict:
    return {"video": torch.stack([i["video"] for i in items]), "text": torch.stack([i["text"] for i in items]),
            "captions": [i["captions"] for i in items], "meta": [i["meta"] for i in items]}


class ShapeShotsDataset(Dataset):
    """``size`` stories of ``cfg`` from seeds ``seed + offset(split) + i``; cached after first render."""

    def __init__(self, cfg: ShapeShotsConfig, tokenizer: Tokenizer, text_tokens: int, size: int,
                 seed: int = 0, split: str = "train", cache: bool = True):
        if split not in SPLIT_OFFSETS:
            raise ValueError(f"split must be one of {sorted(SPLIT_OFFSETS)}, got {split!r}")
        self.cfg, self.tokenizer, self.text_tokens, self.size = cfg, tokenizer, text_tokens, size
        self.base = seed + SPLIT_OFFSETS[split]
        self._cache: dict[int, dict] | None = {} if cache else None

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        video, story = generate(self.base + i, self.cfg)
        item = {"video": torch.from_numpy(video) * 2 - 1, "captions": story.captions, "meta": story.metadata(),
                "text": self.tokenizer.encode_shots(story.captions, self.text_tokens)}
        if self._cache is not None:
            self._cache[i] = item
        return item


class ShapeShotsDataModule(L.LightningDataModule):
    """Multi-shot ShapeShots stories (``shapes.shots`` shots each); see :class:`SingleShotDataModule`."""

    def __init__(self, shapes: ShapeShotsConfig, *, text_tokens: int = 16, train_size: int = 1024,
                 val_size: int = 32, batch_size: int = 16, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.shapes, self.text_tokens = shapes, text_tokens
        self.train_size, self.val_size, self.batch_size = train_size, val_size, batch_size
        self.num_workers, self.seed = num_workers, seed
        self.tokenizer = Tokenizer(vocabulary(shapes))

    def dataset(self, split: str, size: int) -> ShapeShotsDataset:
        return ShapeShotsDataset(self.shapes, self.tokenizer, self.text_tokens, size, self.seed, split)

    def setup(self, stage: str | None = None) -> None:
        self.train_set = self.dataset("train", self.train_size)
        self.val_set = self.dataset("val", self.val_size)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=g, drop_last=True,
                          collate_fn=collate, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, collate_fn=collate, num_workers=self.num_workers)


class SingleShotDataModule(ShapeShotsDataModule):
    """Single-shot clips: one-shot ShapeShots stories (``shapes.shots`` must be 1)."""

    def __init__(self, shapes: ShapeShotsConfig, **kwargs):
        if shapes.shots != 1:
            raise ValueError(f"single-shot clips need shots=1, got {shapes.shots}")
        super().__init__(shapes, **kwargs)
