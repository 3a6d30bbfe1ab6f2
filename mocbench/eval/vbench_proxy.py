"""Weight-free VBench proxies: temporal flickering, dynamic degree, motion smoothness, imaging quality.

Every number here is a *proxy* (rows say ``proxy=1`` and tables mark them with a dagger), except
temporal flickering, which is VBench's own formula. Each shot of a multi-shot sample is one clip
(the black gap frames between shots are not part of any clip); per-video scores average the
shots, the set's score averages the videos.

- temporal flickering (VBench's formula): mean absolute difference of consecutive frames (0-255),
  averaged over frames and clips, then ``(255 - mean) / 255``; a static clip scores 1.
- dynamic degree (VBench's rule on OpenCV Farneback flow instead of RAFT): per frame pair the mean
  of the top 5% flow magnitudes; a clip is dynamic when at least ``round(4 * frames / 16)`` pairs
  (at least 1) exceed ``6 * min(H, W) / 256`` px; the score is the fraction of dynamic clips.
  VBench's threshold is 6 px at 256 px; it scales with the stored frame size (1.5 px at 64 px).
- motion smoothness (flow interpolation instead of AMT): every middle frame of three is
  re-created from its neighbours by flow-based interpolation; the score is
  ``(255 - mean abs error) / 255``, as VBench scores AMT's interpolation.
- imaging quality (BRISQUE instead of MUSIQ): the no-reference BRISQUE score of the ``brisque``
  package (its SVM model ships in the wheel, nothing is downloaded), mean over frames, mapped to
  ``(100 - BRISQUE) / 100`` clipped to [0, 1] so that higher is better as in VBench.
"""

from __future__ import annotations

import functools

import numpy as np

from mocbench.eval.flow import interpolate_middle, optical_flow, top_magnitude


def temporal_flickering(clip: np.ndarray) -> float:
    """VBench's temporal flickering of one clip, uint8 ``(F, H, W, 3)``: 1 for a static clip."""
    if len(clip) < 2:
        raise ValueError(f"temporal flickering needs >= 2 frames per clip, got {len(clip)}")
    f = clip.astype(np.float32)
    mae = float(np.mean([np.mean(np.abs(f[i + 1] - f[i])) for i in range(len(f) - 1)]))
    return (255.0 - mae) / 255.0


def dynamic_params(clip: np.ndarray) -> tuple[float, int]:
    """VBench's ``(thres, count_num)`` scaled to this clip's size and length."""
    F, H, W = clip.shape[:3]
    return 6.0 * min(H, W) / 256.0, max(1, round(4 * F / 16.0))


def flow_magnitudes(clip: np.ndarray) -> list[float]:
    return [top_magnitude(optical_flow(clip[i], clip[i + 1])) for i in range(len(clip) - 1)]


def is_dynamic(clip: np.ndarray) -> bool:
    thres, count = dynamic_params(clip)
    return sum(m > thres for m in flow_magnitudes(clip)) >= count


def motion_smoothness(clip: np.ndarray) -> float:
    """``(255 - MAE) / 255`` of flow-interpolated middle frames; needs >= 3 frames."""
    if len(clip) < 3:
        raise ValueError(f"motion smoothness needs >= 3 frames per clip, got {len(clip)}")
    errs = [np.mean(np.abs(interpolate_middle(clip[i - 1], clip[i + 1]) - clip[i].astype(np.float32)))
            for i in range(1, len(clip) - 1)]
    return (255.0 - float(np.mean(errs))) / 255.0


@functools.cache
def _brisque():
    import brisque

    class _Brisque(brisque.BRISQUE):
        """brisque 0.2.0 keeps some features as 1-element arrays, which numpy 2 refuses to ``float()``."""

        def scale_features(self, features):
            f = np.array([float(np.ravel(np.asarray(x, dtype=np.float64))[0]) for x in features])
            lo = np.asarray(self.scale_params["min_"], dtype=np.float64)
            hi = np.asarray(self.scale_params["max_"], dtype=np.float64)
            return -1 + 2.0 / (hi - lo) * (f - lo)

    return _Brisque(url=False)


def brisque_score(frame: np.ndarray) -> float:
    """BRISQUE of one uint8 ``(H, W, 3)`` frame (lower is better, roughly 0-100)."""
    return float(_brisque().score(np.ascontiguousarray(frame)))


def imaging_quality(clip: np.ndarray) -> tuple[float, float]:
    """``(quality in [0, 1], mean BRISQUE)`` over the clip's frames."""
    b = float(np.nanmean([brisque_score(f) for f in clip]))
    return float(np.clip((100.0 - b) / 100.0, 0.0, 1.0)), b


def proxy_scores(videos: list[np.ndarray]) -> dict[str, float]:
    """All proxies over uint8 videos ``(S, F, H, W, 3)``; each shot is a clip."""
    per = {"temporal_flickering": [], "dynamic_degree": [], "flow_top5_px": [], "motion_smoothness": [],
           "imaging_quality": [], "brisque": []}
    for video in videos:
        clips = list(video)
        per["temporal_flickering"].append(np.mean([temporal_flickering(c) for c in clips]))
        per["dynamic_degree"].append(np.mean([is_dynamic(c) for c in clips]))
        per["flow_top5_px"].append(np.mean([np.mean(flow_magnitudes(c)) for c in clips]))
        if video.shape[1] >= 3:
            per["motion_smoothness"].append(np.mean([motion_smoothness(c) for c in clips]))
        iq = [imaging_quality(c) for c in clips]
        per["imaging_quality"].append(np.mean([q for q, _ in iq]))
        per["brisque"].append(np.mean([b for _, b in iq]))
    out = {k: float(np.mean(v)) if v else float("nan") for k, v in per.items()}
    thres, count = dynamic_params(videos[0][0]) if videos else (float("nan"), 0)
    out.update({"dynamic_thres_px": thres, "dynamic_count_num": count})
    return out
