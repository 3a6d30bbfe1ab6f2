"""Fidelity to dense: PSNR and SSIM (torchmetrics) between a backend's samples and the dense ones.

The standard measure of sparse-attention video papers: same weights, captions and noise seeds,
only the attention differs, so any pixel difference is the sparse backend's error. Frames are
compared at the stored resolution, one video at a time (PSNR from the MSE over the whole video;
SSIM averaged over frames), then averaged over videos. Identical videos give PSNR ``inf`` and
SSIM 1.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mocbench.eval.samples import SampleSet, check_matching


def video_psnr_ssim(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and SSIM of two uint8 ``(..., H, W, 3)`` videos of the same shape."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    if a.shape != b.shape:
        raise ValueError(f"videos differ in shape: {a.shape} vs {b.shape}")
    x = torch.from_numpy(a.reshape(-1, *a.shape[-3:])).permute(0, 3, 1, 2).double() / 255.0
    y = torch.from_numpy(b.reshape(-1, *b.shape[-3:])).permute(0, 3, 1, 2).double() / 255.0
    mse = torch.mean((x - y) ** 2).item()
    psnr = math.inf if mse == 0 else float(peak_signal_noise_ratio(x, y, data_range=1.0))
    k = min(11, x.shape[-1], x.shape[-2])
    k -= 1 - k % 2  # odd kernel no larger than the frame
    ssim = float(structural_similarity_index_measure(x, y, data_range=1.0, kernel_size=k))
    return psnr, ssim


def fidelity(samples: SampleSet, reference: SampleSet) -> dict[str, float]:
    """Mean PSNR / SSIM of ``samples`` against ``reference`` (usually the dense backend's samples)."""
    check_matching(samples, reference)
    scores = [video_psnr_ssim(samples.video(i), reference.video(i)) for i in range(len(samples))]
    psnrs, ssims = zip(*scores) if scores else ((), ())
    finite = [p for p in psnrs if math.isfinite(p)]
    return {"psnr": float(np.mean(psnrs)) if psnrs else math.nan,
            "psnr_finite": float(np.mean(finite)) if finite else math.inf,
            "ssim": float(np.mean(ssims)) if ssims else math.nan,
            "fidelity_reference": reference.label, "fidelity_videos": len(scores)}
