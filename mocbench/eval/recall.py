"""Position-free recall: does a shot draw a returning entity and scene in the colours they had before?

The one definition of long-range memory in mocbench: ``mocbench memory`` scores ShapeShots
``recall`` and ``binding`` stories with it, and the ``memory`` evaluator of ``mocbench eval``
scores any folder of ShapeShots samples. It reads the *generated frames alone*: no ground-truth
masks or positions, so a video that draws nothing cannot score. The story's shot plan (what its
captions and task say) only decides *which* shots are compared (:class:`RecallPlan`): in a recall
story every later shot repeats shot 0; in a binding story every later shot repeats the shot that
introduced the captioned entity, and the other introduction shots are its distractors.

1. Every pixel is labelled with the nearest colour of the ShapeShots palettes (entity colours, then
   scene colours) if it lies within that colour's ``RADII`` (RGB in [0, 1]): half its distance to the
   nearest other palette colour, so the balls never overlap and a label is never ambiguous
   (entity colours: 0.18-0.39; scene colours: 0.10-0.15); else "none".
2. Per shot: the *scene colour* is the most frequent scene-palette label if it covers at least
   ``MIN_SCENE_FRACTION`` of the shot's pixels; the *entity colour* is the most frequent
   entity-palette label if it covers at least ``MIN_ENTITY_FRACTION``. Otherwise "not found".
   (Made for solid entities on plain scenes; a texture or pattern keeps the dominant colour only
   where its base colour covers most of the sprite or background.)
3. A scored shot k with source shot s is a hit when both colours were found and are equal; a
   story's recall is its fraction of hits (a shot where nothing is found is a miss), and recall is
   the mean over stories. Binding stories also give the *distractor* rate: scored shots that miss
   but show the colour of another entity's introduction shot (memory without the caption's binding).
4. Chance: the same comparison between *different* stories (shot k of story a vs shot s of story
   b != a), i.e. the recall a model reaches by drawing plausible colours with no memory.
5. Intervals: a percentile bootstrap over stories (``scipy.stats.bootstrap``), because the scored
   shots of one story are not independent. Tests against a reference: a two-proportion z-test whose
   standard errors are clustered by story (:func:`two_proportion_test`).

Videos are float ``(N, S, F, 3, H, W)`` in [0, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from mocbench.tasks.shapeshots import ENTITY_COLOURS, SCENE_COLOURS, Story

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


@dataclass(frozen=True)
class RecallPlan:
    """Which earlier shot each shot of a story must repeat, from the story's shot plan (what its
    captions and the task say), never from its pixels. Per shot ``k``:

    - ``entity_source[k]``: the first earlier shot that showed shot ``k``'s entity alone, when shot
      ``k`` shows exactly one entity; ``-1`` (not scored) otherwise or at its first appearance;
    - ``scene_source[k]``: the first earlier shot of shot ``k``'s scene, or ``-1``;
    - ``distractors[k]``: the first-alone shots of the *other* entities before shot ``k`` (binding:
      the entities that do not return); empty for recall stories.
    """

    entity_source: tuple[int, ...]
    scene_source: tuple[int, ...]
    distractors: tuple[tuple[int, ...], ...]

    @classmethod
    def recall(cls, shots: int) -> RecallPlan:
        """One entity and one scene in every shot (ShapeShots ``recall``): every later shot repeats shot 0."""
        later = (-1,) + (0,) * (shots - 1)
        return cls(later, later, ((),) * shots)


def story_plan(story: Story) -> RecallPlan:
    """The :class:`RecallPlan` of a ShapeShots story (any kind; ``recall`` gives :meth:`RecallPlan.recall`)."""
    S = len(story.shots)
    ent, scene, distract = [-1] * S, [-1] * S, [()] * S
    first_alone: dict[int, int] = {}
    first_scene: dict[int, int] = {}
    for shot in story.shots:
        k = shot.shot
        if len(shot.entities) == 1:
            e = shot.entities[0]
            if e in first_alone:
                ent[k] = first_alone[e]
                distract[k] = tuple(j for other, j in first_alone.items() if other != e)
            else:
                first_alone[e] = k
        if shot.scene in first_scene:
            scene[k] = first_scene[shot.scene]
        else:
            first_scene[shot.scene] = k
    return RecallPlan(tuple(ent), tuple(scene), tuple(distract))


def _sources(plans: list[RecallPlan] | None, N: int, S: int, which: str) -> np.ndarray:
    """int ``(N, S)`` source shots of every story (``-1``: not scored)."""
    if plans is None:
        plans = [RecallPlan.recall(S)] * N
    if len(plans) != N:
        raise ValueError(f"{len(plans)} plans for {N} videos: give one RecallPlan per story")
    src = np.array([getattr(p, which) for p in plans], dtype=np.int64).reshape(N, -1)
    if src.shape[1] != S:
        raise ValueError(f"plans are for {src.shape[1]} shots but the videos have {S}")
    return src


def recall_hits(colours: np.ndarray, source: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(hits, pairs)``, bool ``(N, S)`` each: shot ``k`` is scored (``pairs``) when it has a source
    shot, and a hit when its colour was found and equals its source shot's. ``source`` int ``(N, S)``
    (default: every later shot repeats shot 0)."""
    N, S = colours.shape
    if source is None:
        source = _sources(None, N, S, "entity_source")
    pairs = source >= 0
    src_colour = np.take_along_axis(colours, np.maximum(source, 0), axis=1)
    return pairs & (colours == src_colour) & (colours != NOT_FOUND), pairs


def chance_rate(colours: np.ndarray, source: np.ndarray | None = None) -> float:
    """Recall against *other* stories: per scored shot ``(a, k)`` with source shot ``s``, the fraction
    of stories ``b != a`` with ``colours[b, s] == colours[a, k] != NOT_FOUND``; averaged over a story's
    scored shots, then over stories (the recall a model reaches by drawing plausible colours with no
    memory)."""
    N, S = colours.shape
    if N < 2 or S < 2:
        raise ValueError(f"chance needs >= 2 stories of >= 2 shots, got {N} x {S}")
    if source is None:
        source = _sources(None, N, S, "entity_source")
    K = int(colours.max()) + 2  # colour c counted at c + 1; NOT_FOUND at 0
    count = np.zeros((S, K), dtype=np.int64)  # count[s, c + 1]: stories whose shot s has colour c
    for s in range(S):
        count[s] = np.bincount(colours[:, s] + 1, minlength=K)
    pairs = source >= 0
    src = np.maximum(source, 0)
    own = np.take_along_axis(colours, src, axis=1) == colours  # story a itself is not "another story"
    others = count[src, colours + 1] - own
    rate = np.where(pairs & (colours != NOT_FOUND), others / (N - 1), 0.0)
    scored = pairs.sum(1)
    keep = scored > 0
    return float((rate.sum(1)[keep] / scored[keep]).mean()) if keep.any() else float("nan")


def distractor_hits(colours: np.ndarray, source: np.ndarray, distractors: np.ndarray) -> np.ndarray:
    """bool ``(N, S)``: a scored shot that misses but shows the colour of a distractor shot (another
    entity of the story, as drawn in the shot that introduced it). ``distractors`` bool ``(N, S, S)``:
    ``[n, k, j]`` when shot ``j`` is a distractor of shot ``k``."""
    hits, pairs = recall_hits(colours, source)
    same = (colours[:, :, None] == colours[:, None, :]) & (colours[:, None, :] != NOT_FOUND)  # (N, k, j)
    return pairs & ~hits & (same & distractors).any(-1)


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
    """Recall of entity and scene colours over the scored shots of ``stories`` stories, with 95 %
    intervals. Rates are means over stories of per-story rates (a story's scored shots are not
    independent); stories with no scored shot are left out of a rate."""

    stories: int
    pairs: int  # scored (later shot, source shot) entity pairs
    entity_recall: float
    entity_lo: float
    entity_hi: float
    chance: float  # entity recall by chance (cross-story pairs)
    distractor: float  # scored shots drawn in another entity's colour (NaN when no story has distractors)
    distractor_lo: float
    distractor_hi: float
    scene_recall: float
    scene_lo: float
    scene_hi: float
    scene_chance: float
    entity_found: float  # fraction of shots where an entity colour was found
    entity_per_story: list[int]  # hits per story: the test's input
    entity_pairs_per_story: list[int]  # scored shots per story
    scene_per_story: list[int]
    scene_pairs_per_story: list[int]

    def row(self) -> dict:
        """Flat dict for a result row (per-story counts as space-separated text)."""
        d = asdict(self)
        for k in ("entity_per_story", "entity_pairs_per_story", "scene_per_story", "scene_pairs_per_story"):
            d[k] = " ".join(map(str, d[k]))
        return d


def _rate(hits: np.ndarray, pairs: np.ndarray, seed: int, what: str = "") -> tuple[float, float, float]:
    """``(mean of per-story rates, bootstrap lo, hi)`` over stories with >= 1 pair; with fewer than 2
    such stories a ``ValueError`` naming ``what`` if given, else NaNs."""
    per_story = per_story_rate(hits, pairs)
    if per_story.size < 2:
        if what:
            raise ValueError(f"recall needs >= 2 stories with a scored shot ({what}), got {per_story.size}")
        return float("nan"), float("nan"), float("nan")
    return (float(per_story.mean()), *bootstrap_interval(per_story, seed=seed))


def evaluate_recall(videos: np.ndarray, plans: list[RecallPlan] | None = None, *, seed: int = 0) -> RecallResult:
    """Recall, chance, distractor rate and bootstrap intervals of ``videos`` ``(N, S, F, 3, H, W)`` in
    [0, 1]; ``plans``: one :class:`RecallPlan` per story (default: recall stories, shot 0 returns)."""
    entity, scene = shot_colours(videos)
    N, S = entity.shape
    if N < 2 or S < 2:
        raise ValueError(f"recall needs >= 2 stories of >= 2 shots, got {N} stories of {S} shots")
    e_src, s_src = _sources(plans, N, S, "entity_source"), _sources(plans, N, S, "scene_source")
    distract = np.zeros((N, S, S), dtype=bool)
    for n, p in enumerate(plans or []):
        for k, js in enumerate(p.distractors):
            distract[n, k, list(js)] = True
    e_hits, e_pairs = recall_hits(entity, e_src)
    s_hits, s_pairs = recall_hits(scene, s_src)
    e, e_lo, e_hi = _rate(e_hits.sum(1), e_pairs.sum(1), seed, "an entity seen alone in an earlier shot")
    sc, s_lo, s_hi = _rate(s_hits.sum(1), s_pairs.sum(1), seed)  # NaN when scenes never return
    has_d = (distract.any(-1) & e_pairs).any(1)  # stories whose scored shots have distractors
    d_hits = distractor_hits(entity, e_src, distract).sum(1)
    d = d_lo = d_hi = float("nan")
    if has_d.sum() >= 2:
        d, d_lo, d_hi = _rate(d_hits[has_d], e_pairs.sum(1)[has_d], seed)
    return RecallResult(stories=N, pairs=int(e_pairs.sum()), entity_recall=e, entity_lo=e_lo, entity_hi=e_hi,
                        chance=chance_rate(entity, e_src), distractor=d, distractor_lo=d_lo, distractor_hi=d_hi,
                        scene_recall=sc, scene_lo=s_lo, scene_hi=s_hi, scene_chance=chance_rate(scene, s_src),
                        entity_found=float((entity != NOT_FOUND).mean()),
                        entity_per_story=e_hits.sum(1).tolist(), entity_pairs_per_story=e_pairs.sum(1).tolist(),
                        scene_per_story=s_hits.sum(1).tolist(), scene_pairs_per_story=s_pairs.sum(1).tolist())


def per_story_rate(hits: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Per-story rates ``hits / pairs`` of the stories with >= 1 pair."""
    hits, pairs = np.asarray(hits, dtype=np.float64), np.asarray(pairs, dtype=np.float64)
    keep = pairs > 0
    return hits[keep] / pairs[keep]


def per_story_recall(hits_text: str, pairs_text: str) -> np.ndarray:
    """Per-story rates from a row's space-separated counts (``RecallResult.row``)."""
    parse = lambda t: np.array([int(x) for x in str(t).split()], dtype=np.float64)
    hits, pairs = parse(hits_text), parse(pairs_text)
    if hits.shape != pairs.shape:
        raise ValueError(f"{hits.size} per-story hits but {pairs.size} per-story pair counts")
    return per_story_rate(hits, pairs)
