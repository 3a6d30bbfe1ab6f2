"""Memory probe on ShapeShots: do recurring entities and scenes look the same in every shot?

Captions name entities and scenes by id only, so drawing entity 2 correctly in shot 3 needs
attention to an earlier shot where it was seen: the long-range retrieval that sparse attention
can break. From the saved story metadata (cast, scenes, which entity is where in which shot) we
know each entity's ground-truth pixels in every frame; we measure the *generated* video there.

- identity consistency: for each entity seen in >= 2 shots, its mean colour inside its visible
  ground-truth mask, per shot; ``1 - mean pairwise RGB distance / sqrt(3)`` over those shots
  (1: the same colour everywhere), averaged over recurring entities.
- scene consistency: the same for scenes, with the background (pixels no entity covers).
- identity accuracy: the fraction of entity appearances whose generated mean colour is closer to
  the entity's own colour than to any other cast member's (does retrieval pick the right entity?).

The same numbers on the rendered ground truth are the ceiling (``gt_*`` columns).
Videos here are float ``(S, F, 3, H, W)`` in [0, 1] at the story's native size.
"""

from __future__ import annotations

import itertools

import numpy as np

from mocbench.tasks.shapeshots import (
    ENTITY_COLOURS,
    Entity,
    Scene,
    ShapeShotsConfig,
    ShotSpec,
    Story,
    entity_sprite,
    render_story,
)


def story_from_metadata(meta: dict) -> Story:
    """Rebuild a :class:`Story` from ``Story.metadata()`` (the ``ground_truth`` of a sample)."""
    try:
        cfg = ShapeShotsConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()})
        return Story(int(meta["seed"]), cfg, [Entity(**e) for e in meta["cast"]],
                     [Scene(**s) for s in meta["scenes"]], [ShotSpec(**s) for s in meta["shots"]])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"ground truth is not ShapeShots story metadata: {type(exc).__name__}: {exc}") from None


def entity_masks(story: Story) -> dict[tuple[int, int], np.ndarray]:
    """``{(shot, entity): visible mask (F, H, W) bool}``; later-pasted entities hide earlier ones."""
    cfg = story.config
    H, W, F = cfg.height, cfg.width, cfg.frames
    sprites = {e.id: entity_sprite(e, cfg)[1] for e in story.cast}
    out = {}
    for shot in story.shots:
        owner = np.full((F, H, W), -1, dtype=np.int64)
        for eid, traj in zip(shot.entities, shot.positions):
            m = sprites[eid]
            s = m.shape[0]
            for f, (top, left) in enumerate(traj):
                y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + s, H), min(left + s, W)
                if y0 < y1 and x0 < x1:
                    sub = m[y0 - top:y1 - top, x0 - left:x1 - left]
                    owner[f, y0:y1, x0:x1][sub] = eid
        for eid in shot.entities:
            out[(shot.shot, eid)] = owner == eid
        out[(shot.shot, -1)] = owner == -1  # background
    return out


def _mean_colour(video: np.ndarray, shot: int, mask: np.ndarray) -> np.ndarray | None:
    if not mask.any():
        return None
    pixels = video[shot].transpose(0, 2, 3, 1)[mask]  # (n, 3)
    return pixels.mean(axis=0)


def _consistency(colours: list[np.ndarray]) -> float:
    d = [np.linalg.norm(a - b) for a, b in itertools.combinations(colours, 2)]
    return 1.0 - float(np.mean(d)) / np.sqrt(3.0)


def story_memory(video: np.ndarray, story: Story) -> dict[str, float]:
    """Identity / scene consistency and identity accuracy of one video against its story."""
    cfg = story.config
    if video.shape != (cfg.shots, cfg.frames, 3, cfg.height, cfg.width):
        raise ValueError(f"video shape {video.shape} does not match the story "
                         f"({cfg.shots}, {cfg.frames}, 3, {cfg.height}, {cfg.width})")
    masks = entity_masks(story)
    ident, scene, hits = [], [], []
    true_rgb = {e.id: np.array(ENTITY_COLOURS[e.colour]) for e in story.cast}
    for e in story.cast:
        shots = [s.shot for s in story.shots if e.id in s.entities]
        colours = [c for s in shots if (c := _mean_colour(video, s, masks[(s, e.id)])) is not None]
        for c in colours:
            nearest = min(true_rgb, key=lambda k: np.linalg.norm(true_rgb[k] - c))
            hits.append(nearest == e.id)
        if len(colours) >= 2:
            ident.append(_consistency(colours))
    for sc in story.scenes:
        shots = [s.shot for s in story.shots if s.scene == sc.id]
        colours = [c for s in shots if (c := _mean_colour(video, s, masks[(s, -1)])) is not None]
        if len(colours) >= 2:
            scene.append(_consistency(colours))
    nan = float("nan")
    return {"identity_consistency": float(np.mean(ident)) if ident else nan,
            "scene_consistency": float(np.mean(scene)) if scene else nan,
            "identity_accuracy": float(np.mean(hits)) if hits else nan,
            "recurring_entities": len(ident), "recurring_scenes": len(scene)}


def memory_scores(videos: list[np.ndarray], stories: list[Story]) -> dict[str, float]:
    """Means over stories (NaN-aware) for the generated videos and, as ``gt_*``, the ground truth."""
    if len(videos) != len(stories):
        raise ValueError(f"{len(videos)} videos but {len(stories)} stories")
    gen = [story_memory(v, s) for v, s in zip(videos, stories)]
    gt = [story_memory(render_story(s), s) for s in stories]
    out = {}
    for key in ("identity_consistency", "scene_consistency", "identity_accuracy"):
        out[key] = _nanmean([r[key] for r in gen])
        out[f"gt_{key}"] = _nanmean([r[key] for r in gt])
    out["recurring_entities"] = int(sum(r["recurring_entities"] for r in gen))
    out["recurring_scenes"] = int(sum(r["recurring_scenes"] for r in gen))
    return out


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")
