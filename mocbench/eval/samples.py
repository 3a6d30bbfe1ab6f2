"""Reading a samples folder of ``mocbench sample``: ``metadata.json`` + ``sample_XXX.mp4`` -> frames.

A :class:`SampleSet` holds the metadata and decodes each mp4 back into ``(S, F, H, W, 3)`` uint8
frames at the stored (upscaled) resolution: the writer puts the shots one after another with
black gap frames between them, scales frames by an integer factor and pads them to multiples of
16 px, so the shot count, frames per shot and native size come from the metadata (the ShapeShots
story config, or the token layout) and the gap / scale / padding are undone here.
Every user error (missing folder, missing or unreadable file, mismatched sets) is a ``ValueError``
that names the path or value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from mocbench.registry import get_backend

SHOT_GAP = 1  # black frames between shots (mocbench.tasks.media.write_mp4's default)


@dataclass
class SampleSet:
    """A folder of samples; ``videos()`` decodes them lazily (cached)."""

    root: Path
    meta: dict

    @classmethod
    def load(cls, root: str | Path) -> SampleSet:
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise ValueError(f"samples folder {str(root)!r} is a file; give the folder written by `mocbench sample`")
        if not root.is_dir():
            raise ValueError(f"samples folder {str(root)!r} does not exist (write one with `mocbench sample`)")
        meta_path = root / "metadata.json"
        if not meta_path.is_file():
            raise ValueError(f"{str(meta_path)!r} is missing: {str(root)!r} is not a `mocbench sample` folder")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{str(meta_path)!r} is not valid JSON: {exc}") from None
        for key in ("backend", "seed", "num", "samples"):
            if key not in meta:
                raise ValueError(f"{str(meta_path)!r} has no {key!r} field")
        if len(meta["samples"]) != meta["num"]:
            raise ValueError(f"{str(meta_path)!r}: num={meta['num']} but {len(meta['samples'])} samples are listed")
        return cls(root, meta)

    # ------------------------------------------------------------------ identity
    @property
    def backend(self) -> str:
        return self.meta["backend"]

    @property
    def backend_params(self) -> dict:
        return dict(self.meta.get("backend_params") or {})

    @cached_property
    def label(self) -> str:
        """Registry label of the backend (name + non-default params), as in benchmark rows."""
        try:
            return get_backend(self.backend, **self.backend_params).label
        except (KeyError, TypeError, ValueError):
            params = ", ".join(f"{k}={v}" for k, v in sorted(self.backend_params.items()))
            return f"{self.backend}({params})" if params else self.backend

    @property
    def checkpoint(self) -> str:
        return str(self.meta.get("checkpoint", ""))

    def __len__(self) -> int:
        return int(self.meta["num"])

    # ------------------------------------------------------------------ geometry
    @cached_property
    def geometry(self) -> tuple[int, int, int, int]:
        """``(shots, frames per shot, height, width)`` at the model's native resolution."""
        samples = self.meta["samples"]
        gt = samples[0].get("ground_truth") if samples else None
        if isinstance(gt, dict) and "config" in gt:
            c = gt["config"]
            return int(c["shots"]), int(c["frames"]), int(c["height"]), int(c["width"])
        raise ValueError(f"{str(self.root)!r}: samples carry no ShapeShots ground truth (story config), so the "
                         f"native shot/frame geometry is unknown (layout {self.meta.get('layout')!r})")

    def mp4_path(self, i: int) -> Path:
        return self.root / self.meta["samples"][i]["mp4"]

    # ------------------------------------------------------------------ pixels
    def video(self, i: int) -> np.ndarray:
        """Sample ``i`` as uint8 ``(S, F, h, w, 3)`` at the stored resolution (``h = H * scale``)."""
        return self._videos[i]

    def videos(self) -> list[np.ndarray]:
        return self._videos

    @cached_property
    def _videos(self) -> list[np.ndarray]:
        return [read_video(self.mp4_path(i), *self.geometry) for i in range(len(self))]

    @cached_property
    def scale(self) -> int:
        _S, _F, H, _W = self.geometry
        return self.video(0).shape[2] // H if len(self) else 1

    def native(self, i: int) -> np.ndarray:
        """Sample ``i`` as float ``(S, F, 3, H, W)`` in [0, 1] at native size (block means undo the upscale)."""
        v = self.video(i).astype(np.float32) / 255.0
        s = self.scale
        S, F, h, w, _ = v.shape
        v = v.reshape(S, F, h // s, s, w // s, s, 3).mean(axis=(3, 5))
        return v.transpose(0, 1, 4, 2, 3)


def read_video(path: str | Path, shots: int, frames: int, height: int, width: int) -> np.ndarray:
    """Decode an mp4 of :func:`mocbench.tasks.media.write_mp4` into uint8 ``(S, F, h, w, 3)``."""
    import imageio.v2 as imageio

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"video {str(path)!r} does not exist")
    try:
        seq = np.stack(imageio.mimread(str(path), memtest=False))
    except Exception as exc:  # noqa: BLE001 - imageio/ffmpeg raise many types for a corrupt file
        raise ValueError(f"cannot read video {str(path)!r}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    expected = shots * frames + (shots - 1) * SHOT_GAP
    if len(seq) != expected:
        raise ValueError(f"video {str(path)!r} has {len(seq)} frames, expected {expected} "
                         f"({shots} shots x {frames} frames + gaps)")
    scale = seq.shape[1] // height
    if scale < 1 or seq.shape[2] // width != scale:
        raise ValueError(f"video {str(path)!r} is {seq.shape[2]}x{seq.shape[1]} px, not a multiple of {width}x{height}")
    out = []
    for s in range(shots):
        start = s * (frames + SHOT_GAP)
        out.append(seq[start:start + frames, :height * scale, :width * scale, :3])
    return np.stack(out)


def check_matching(a: SampleSet, b: SampleSet) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` come from the same checkpoint, captions and seeds."""
    if a.checkpoint and b.checkpoint and Path(a.checkpoint).resolve() != Path(b.checkpoint).resolve():
        raise ValueError(f"sample sets differ in checkpoint: {a.checkpoint!r} ({a.root}) vs {b.checkpoint!r} ({b.root})")
    for key in ("num", "seed", "steps", "sampler"):
        if a.meta.get(key) != b.meta.get(key):
            raise ValueError(f"sample sets differ in {key}: {a.meta.get(key)!r} ({a.root}) vs "
                             f"{b.meta.get(key)!r} ({b.root})")
    for sa, sb in zip(a.meta["samples"], b.meta["samples"]):
        for key in ("noise_seed", "captions"):
            if sa.get(key) != sb.get(key):
                raise ValueError(f"sample {sa.get('index')} differs in {key}: {sa.get(key)!r} ({a.root}) vs "
                                 f"{sb.get(key)!r} ({b.root})")
    if a.geometry != b.geometry:
        raise ValueError(f"sample sets differ in geometry (shots, frames, H, W): {a.geometry} vs {b.geometry}")
