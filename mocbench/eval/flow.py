"""Dense optical flow (OpenCV Farneback) and flow-based frame interpolation for the VBench proxies.

VBench computes flow with RAFT and interpolates frames with AMT, both learned models whose weights
are downloaded; these are the classical, weight-free stand-ins. Frames are uint8 ``(H, W, 3)``.
Flow ``(H, W, 2)`` holds ``(dx, dy)`` in pixels from ``a`` to ``b``: ``b[y + dy, x + dx] ~ a[y, x]``.
"""

from __future__ import annotations

import numpy as np

# Farneback settings for small frames (our stored frames are 32-256 px): a 3-level pyramid
# finds shifts of up to ~8 px; a 9 px window keeps 4x-upscaled 16 px sprites trackable.
FARNEBACK = {"pyr_scale": 0.5, "levels": 3, "winsize": 9, "iterations": 5, "poly_n": 5, "poly_sigma": 1.1, "flags": 0}


def _cv2():
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ImportError("the VBench proxies need OpenCV: pip install opencv-python-headless") from exc
    return cv2


def _gray(frame: np.ndarray) -> np.ndarray:
    return _cv2().cvtColor(np.ascontiguousarray(frame, dtype=np.uint8), _cv2().COLOR_RGB2GRAY)


def optical_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Farneback flow from frame ``a`` to frame ``b``: float32 ``(H, W, 2)`` = (dx, dy) px."""
    return _cv2().calcOpticalFlowFarneback(_gray(a), _gray(b), None, **FARNEBACK)


def warp(frame: np.ndarray, flow: np.ndarray, factor: float) -> np.ndarray:
    """Sample ``frame`` at ``x + factor * flow(x)`` (bilinear, edge pixels repeated)."""
    cv2 = _cv2()
    H, W = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    map_x = xs + factor * flow[..., 0]
    map_y = ys + factor * flow[..., 1]
    return cv2.remap(frame.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def interpolate_middle(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """Estimate the frame halfway between ``prev`` and ``nxt`` (float32, 0-255).

    With flow ``f`` from ``prev`` to ``nxt``, a point at ``x`` in the middle frame sits at about
    ``x - f/2`` in ``prev`` and ``x + f/2`` in ``nxt`` (the flow at ``x`` stands in for the flow of
    the point passing through ``x``, the usual linear-motion approximation); the two warps are
    averaged."""
    f = optical_flow(prev, nxt)
    return 0.5 * (warp(prev, f, -0.5) + warp(nxt, f, 0.5))


def top_magnitude(flow: np.ndarray, fraction: float = 0.05) -> float:
    """VBench's dynamic-degree statistic: mean of the largest ``fraction`` of flow magnitudes."""
    rad = np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2).ravel()
    cut = max(1, int(rad.size * fraction))
    return float(np.mean(np.sort(rad)[::-1][:cut]))
