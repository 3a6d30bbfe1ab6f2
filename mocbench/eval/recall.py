"""Position-free recall: does each later shot draw the entity and the scene in shot 0's colours?

The memory benchmark's evaluator (ShapeShots ``task=recall``: one entity, one scene, both in every
shot). It reads the *generated frames alone*: no ground-truth masks or positions, so a video that
draws nothing cannot score.

1. Every pixel is labelled with the nearest colour of the ShapeShots palettes (entity colours, then
   scene colours) if it lies within that colour's ``RADII`` (RGB in [0, 1]): half its distance to the
   nearest other palette colour, so the balls never overlap and a label is never ambiguous
   (entity colours: 0.18-0.39; scene colours: 0.10-0.15); else "none".
2. Per shot: the *scene colour* is the most frequent scene-palette label if it covers at least
   ``MIN_SCENE_FRACTION`` of the shot's pixels; the *entity colour* is the most frequent
   entity-palette label if it covers at least ``MIN_ENTITY_FRACTION``. Otherwise "not found".
3. A shot pair (shot 0, shot k) is a hit when both colours were found and are equal. A story gives
   ``S - 1`` pairs; recall is the fraction of hits (a shot where nothing is found is a miss).
4. Chance: the same comparison between *different* stories (later shot of story a vs shot 0 of
   story b != a), i.e. the recall a model reaches by drawing plausible colours with no memory.
5. Intervals: a percentile bootstrap over stories (``scipy.stats.bootstrap``), because the pairs of
   one story are not independent. Tests against a reference: a two-proportion z-test whose standard
   errors are clustered by story (:func:`two_proportion_test`).

Videos are float ``(N, S, F, 3, H, W)`` in [0, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from mocbench.tasks.shapeshots import ENTITY_COLOURS, SCENE_COLOURS

PALETTE_NAMES = tuple(ENTITY_COLOURS) + tuple(SCENE_COLOURS)
PALETTE = np.array([*ENTITY_COLOURS.values(), *SCENE_COLOURS.values()], dtype=np.float32)  # (K, 3)
NUM_ENTITY_COLOURS = len(ENTITY_COLOURS)
_GAPS = np.linalg.norm(PALETTE[:, None] - PALETTE[None], axis=-1) + np.eye(len(PALETTE)) * 9
RADII = _GAPS.min(axis=1) / 2  # (K,) per colour: half the distance to the nearest other palette colour
MIN_ENTITY_FRACTION = 0.02  # of a shot's pixels (a small 16x16 sprite covers ~10 %)
MIN_SCENE_FRACTION = 0.30
NOT_FOUND = -1


def label_pixels(video: np.ndarray) -> np.ndarray:
    """Palette index of every pixel (``NOT_FOUND`` unless it lies within the nearest colour's ``RADII``):
    ``(..., 3, H, W)`` in [0, 1] -> int ``(..., H, W)``."""
    rgb = np.moveaxis(np.asarray(video, dtype=np.float32), -3, -1)  # (..., H, W, 3)
    dist = np.linalg.norm(rgb[..., None, :] - PALETTE, axis=-1)  # (..., H, W, K)
    nearest = dist.argmin(axis=-1)
    return np.where(np.take_along_axis(dist, nearest[..., None], -1)[..., 0] <= RADII[nearest], nearest, NOT_FOUND)


def shot_colours(videos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(entity, scene)`` palette indices per shot, each int ``(N, S)``, ``NOT_FOUND`` where absent."""
    videos = np.asarray(videos)
    if videos.ndim != 6 or videos.shape[3] != 3:
        raise ValueError(f"videos must be (N, S, F, 3, H, W), got shape {videos.shape}")
    N, S = videos.shape[:2]
    labels = label_pixels(videos).reshape(N, S, -1)  # (N, S, F*H*W)
    pixels = labels.shape[-1]
    counts = np.stack([(labels == k).sum(-1) for k in range(len(PALETTE))], axis=-1)  # (N, S, K)
    ent_counts, scene_counts = counts[..., :NUM_ENTITY_COLOURS], counts[..., NUM_ENTITY_COLOURS:]
    entity = np.where(ent_counts.max(-1) >= MIN_ENTITY_FRACTION * pixels, ent_counts.argmax(-1), NOT_FOUND)
    scene = np.where(scene_counts.max(-1) >= MIN_SCENE_FRACTION * pixels,
                     scene_counts.argmax(-1) + NUM_ENTITY_COLOURS, NOT_FOUND)
    return entity, scene


def recall_hits(colours: np.ndarray) -> np.ndarray:
    """bool ``(N, S-1)``: shot k's colour equals shot 0's and both were found."""
    first, later = colours[:, :1], colours[:, 1:]
    return (later == first) & (first != NOT_FOUND)


def chance_rate(colours: np.ndarray) -> float:
    """Recall of later shots against shot 0 of *other* stories: mean over ordered story pairs a != b
    and later shots k of ``[colours[a, k] == colours[b, 0] != NOT_FOUND]``."""
    N, S = colours.shape
    if N < 2 or S < 2:
        raise ValueError(f"chance needs >= 2 stories of >= 2 shots, got {N} x {S}")
    first, later = colours[:, 0], colours[:, 1:]
    matches = 0
    for c in np.unique(first[first != NOT_FOUND]):
        in_later = (later == c).sum(axis=1)  # per story
        matches += int(in_later.sum()) * int((first == c).sum()) - int(in_later[first == c].sum())
    return matches / (N * (N - 1) * (S - 1))


def bootstrap_interval(per_story: np.ndarray, confidence: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-story values (stories are the unit)."""
    from scipy.stats import bootstrap

    x = np.asarray(per_story, dtype=np.float64)
    if x.size < 2:
        raise ValueError(f"a bootstrap interval needs >= 2 stories, got {x.size}")
    if np.all(x == x[0]):  # no spread to resample: the interval is the point
        return float(x[0]), float(x[0])
    res = bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=resamples, method="percentile",
                    random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def two_proportion_test(per_story_a: np.ndarray, per_story_b: np.ndarray) -> tuple[float, float]:
    """``(z, two-sided p)`` for equal recall, each recall the mean of its per-story recalls (equal
    pairs per story) with a story-clustered standard error ``sd(per-story) / sqrt(stories)``; the
    pairs of one story are correlated, so the binomial standard error would understate the noise."""
    from scipy.stats import norm

    a, b = (np.asarray(x, dtype=np.float64) for x in (per_story_a, per_story_b))
    if a.size < 2 or b.size < 2:
        raise ValueError(f"a test needs >= 2 stories per side, got {a.size} and {b.size}")
    se = np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    diff = a.mean() - b.mean()
    if se == 0:
        return (0.0, 1.0) if diff == 0 else (float(np.sign(diff) * np.inf), 0.0)
    z = diff / se
    return float(z), float(2 * norm.sf(abs(z)))


@dataclass
class RecallResult:
    """Recall of entity and scene colours over ``stories`` x ``shots - 1`` pairs, with 95 % intervals."""

    stories: int
    pairs: int
    entity_recall: float
    entity_lo: float
    entity_hi: float
    chance: float  # entity recall by chance (cross-story pairs)
    scene_recall: float
    scene_lo: float
    scene_hi: float
    scene_chance: float
    entity_found: float  # fraction of shots where an entity colour was found
    entity_per_story: list[int]  # hits per story (S - 1 pairs each): the test's input
    scene_per_story: list[int]

    def row(self) -> dict:
        """Flat dict for a result row (per-story hits as space-separated text)."""
        d = asdict(self)
        for k in ("entity_per_story", "scene_per_story"):
            d[k] = " ".join(map(str, d[k]))
        return d


def evaluate_recall(videos: np.ndarray, *, seed: int = 0) -> RecallResult:
    """Recall, chance and bootstrap intervals of ``videos`` ``(N, S, F, 3, H, W)`` in [0, 1]."""
    entity, scene = shot_colours(videos)
    N, S = entity.shape
    if N < 2 or S < 2:
        raise ValueError(f"recall needs >= 2 stories of >= 2 shots, got {N} stories of {S} shots")
    ent_hits, scene_hits = recall_hits(entity).sum(1), recall_hits(scene).sum(1)
    e_lo, e_hi = bootstrap_interval(ent_hits / (S - 1), seed=seed)
    s_lo, s_hi = bootstrap_interval(scene_hits / (S - 1), seed=seed)
    return RecallResult(stories=N, pairs=N * (S - 1), entity_recall=float(ent_hits.sum() / (N * (S - 1))),
                        entity_lo=e_lo, entity_hi=e_hi, chance=chance_rate(entity),
                        scene_recall=float(scene_hits.sum() / (N * (S - 1))), scene_lo=s_lo, scene_hi=s_hi,
                        scene_chance=chance_rate(scene), entity_found=float((entity != NOT_FOUND).mean()),
                        entity_per_story=ent_hits.tolist(), scene_per_story=scene_hits.tolist())


def per_story_recall(hits_text: str, shots: int) -> np.ndarray:
    """Per-story recall from a row's space-separated hit counts (``RecallResult.row``)."""
    hits = np.array([int(h) for h in str(hits_text).split()], dtype=np.float64)
    return hits / (shots - 1)
