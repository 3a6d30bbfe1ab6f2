"""Writing videos: mp4 files (imageio-ffmpeg) and PNG contact sheets (one row per shot).

Videos here are float ``(S, F, 3, H, W)`` in ``[-1, 1]``; both writers upscale by an integer
``scale`` with nearest-neighbour so tiny 16x16 frames stay readable.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch


def to_uint8(video: torch.Tensor | np.ndarray, scale: int = 1) -> np.ndarray:
    """``(S, F, 3, H, W)`` in [-1, 1] -> uint8 ``(S, F, H*scale, W*scale, 3)``."""
    v = torch.as_tensor(video).detach().float().cpu()
    v = ((v.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()
    if scale > 1:
        v = v.repeat(scale, axis=2).repeat(scale, axis=3)
    return v


def write_mp4(path: str | Path, video: torch.Tensor, fps: int = 4, scale: int = 4, shot_gap: int = 1) -> Path:
    """All shots one after another, with ``shot_gap`` black frames between shots."""
    frames = to_uint8(video, scale)
    S, _F, H, W, _ = frames.shape
    pad_h, pad_w = (-H) % 16, (-W) % 16  # codecs want multiples of 16
    seq = []
    for s in range(S):
        if s and shot_gap:
            seq += [np.zeros((H + pad_h, W + pad_w, 3), np.uint8)] * shot_gap
        seq += [np.pad(f, ((0, pad_h), (0, pad_w), (0, 0))) for f in frames[s]]
    path = Path(path)
    imageio.mimwrite(str(path), seq, fps=fps, codec="libx264", quality=8, macro_block_size=1,
                     ffmpeg_log_level="error")
    return path


def contact_sheet(videos: list[torch.Tensor], scale: int = 4, gap: int = 2) -> np.ndarray:
    """uint8 ``(rows, cols, 3)``: one row per shot, its frames left to right; several videos
    (e.g. ground truth and sample) are placed side by side, separated by a white bar."""
    parts = [to_uint8(v, scale) for v in videos]
    S, F, H, _W, _ = parts[0].shape
    rows = []
    for s in range(S):
        row = []
        for i, p in enumerate(parts):
            if i:
                row.append(np.full((H, 3 * gap, 3), 255, np.uint8))
            for f in range(F):
                row.append(p[s, f])
                if f < F - 1:
                    row.append(np.zeros((H, gap, 3), np.uint8))
        rows.append(np.concatenate(row, axis=1))
        if s < S - 1:
            rows.append(np.full((gap, rows[-1].shape[1], 3), 128, np.uint8))
    return np.concatenate(rows, axis=0)


def stack_sheets(sheets: list[np.ndarray], gap: int = 6) -> np.ndarray:
    """Several contact sheets one above the other (widths padded)."""
    width = max(s.shape[1] for s in sheets)
    out = []
    for i, s in enumerate(sheets):
        if i:
            out.append(np.full((gap, width, 3), 255, np.uint8))
        out.append(np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0))))
    return np.concatenate(out, axis=0)


def write_png(path: str | Path, image: np.ndarray) -> Path:
    imageio.imwrite(str(path), image)
    return Path(path)
