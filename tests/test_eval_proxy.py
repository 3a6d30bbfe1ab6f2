"""VBench proxies on tiny synthetic clips with known answers (static, shifted, random)."""

from __future__ import annotations

import numpy as np
import pytest

from mocbench.eval.flow import optical_flow
from mocbench.eval.vbench_proxy import (
    dynamic_params,
    imaging_quality,
    is_dynamic,
    motion_smoothness,
    temporal_flickering,
)


def texture(size: int = 96, seed: int = 0) -> np.ndarray:
    """Smooth random texture (uint8 RGB) that optical flow can track."""
    import cv2

    rng = np.random.default_rng(seed)
    t = cv2.GaussianBlur((rng.random((size, size, 3)) * 255).astype(np.float32), (0, 0), 3)
    return ((t - t.min()) / (t.max() - t.min()) * 255).astype(np.uint8)


def moving_clip(dx: int, dy: int, frames: int = 4) -> np.ndarray:
    """64x64 crops of a texture whose content moves by (dx, dy) px per frame."""
    base = texture()
    return np.stack([base[16 - f * dy:80 - f * dy, 16 - f * dx:80 - f * dx] for f in range(frames)])


def test_static_clip_has_flicker_1_and_is_not_dynamic():
    clip = np.stack([texture()[:64, :64]] * 4)
    assert temporal_flickering(clip) == 1.0
    assert not is_dynamic(clip)


def test_flicker_is_vbench_formula_on_a_known_difference():
    clip = np.zeros((3, 8, 8, 3), np.uint8)
    clip[1] = 51  # |diff| = 51 then 51: (255 - 51) / 255
    assert temporal_flickering(clip) == pytest.approx((255 - 51) / 255)


@pytest.mark.parametrize("dx,dy", [(2, 0), (-3, 0), (0, 2)])
def test_known_shift_gives_known_flow_direction_and_magnitude(dx, dy):
    clip = moving_clip(dx, dy)
    flow = optical_flow(clip[0], clip[1])[8:-8, 8:-8]  # away from the borders
    assert np.median(flow[..., 0]) == pytest.approx(dx, abs=0.3)
    assert np.median(flow[..., 1]) == pytest.approx(dy, abs=0.3)


def test_dynamic_degree_uses_vbench_threshold_scaled_to_frame_size():
    assert dynamic_params(np.zeros((16, 256, 256, 3))) == (6.0, 4)  # VBench's own numbers at 256 px, 16 frames
    assert dynamic_params(np.zeros((4, 64, 64, 3))) == (1.5, 1)
    assert is_dynamic(moving_clip(3, 0)) and not is_dynamic(moving_clip(0, 0))


def test_linear_motion_is_smoother_than_random_frames():
    smooth = motion_smoothness(moving_clip(2, 0, frames=5))
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    assert smooth > 0.97 and motion_smoothness(noise) < smooth - 0.2


def test_imaging_quality_is_in_unit_range_and_prefers_a_clean_image_to_noise():
    clean = np.stack([texture()[:64, :64]] * 2)
    noise = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    q_clean, b_clean = imaging_quality(clean)
    q_noise, b_noise = imaging_quality(noise)
    assert 0 <= q_noise <= 1 and 0 <= q_clean <= 1
    assert b_noise > b_clean  # BRISQUE: lower is better
