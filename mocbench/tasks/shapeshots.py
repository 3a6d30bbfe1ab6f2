"""ShapeShots: a procedural multi-shot video generator with long-range identities.

Each *story* (fully determined by an integer seed) draws its own cast: entities (shape,
colour, size, texture) and scenes (background colour and pattern). Each *shot* shows one
scene with one or two entities moving (linear or bouncing, optionally with a camera pan).
Captions name entities and scenes **by id only** (``"shot 1 : entity 2 moves left in scene 0"``),
so the only way to draw entity 2 correctly in shot 1 is to look at an earlier shot where
it was seen: a long-range memory test by construction.

Story kinds (``ShapeShotsConfig.task``):

- ``story`` (default): the cast and shot plan above.
- ``recall``: the memory benchmark's task. One entity and one scene per story, both in every
  shot: shot 0 draws the entity's colour and the scene's colour at random from the palettes
  (:data:`ENTITY_COLOURS`, :data:`SCENE_COLOURS`), and every later shot shows the same entity in
  the same scene, on its own random path and without camera pan. With no caption tokens nothing
  but shot 0's pixels tells a later shot its colours, so drawing them right needs attention to
  shot 0 (the cast settings ``num_entities``, ``num_scenes``, ``max_entities_per_shot`` and
  ``pan_prob`` do not apply).
- ``binding``: the memory benchmark's caption-binding task. ``num_entities`` entities (distinct
  colours drawn at random per story) in one random scene; shot ``i < num_entities`` introduces
  entity ``i`` alone, and every later shot shows one *returning* entity, drawn at random per story.
  Captions are just ``"entity <id>"`` (the id is all the task needs, and short captions keep text a
  small share of the stream at CPU scale): only the caption says which entity returns, only its
  introduction shot's pixels say what it looks like, and the other entities' colours are the
  distractors (``max_entities_per_shot`` and ``pan_prob`` do not apply).

Rendering is sprite based: every entity's sprite is drawn once per story and pasted at
integer positions, so a recurring entity is pixel-identical wherever it is fully visible
(the tests check this from the frames). Frames are float32 RGB in ``[0, 1]``,
``(shots, frames, 3, H, W)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
TEXTURES = ("solid", "stripes", "checker")
SIZES = ("small", "large")
ENTITY_COLOURS = {
    "red": (0.90, 0.15, 0.15), "green": (0.15, 0.80, 0.20), "blue": (0.20, 0.35, 0.95),
    "yellow": (0.95, 0.90, 0.15), "magenta": (0.90, 0.20, 0.85), "cyan": (0.15, 0.90, 0.90),
    "orange": (1.00, 0.55, 0.10), "white": (0.97, 0.97, 0.97),
}
SCENE_COLOURS = {
    "navy": (0.08, 0.10, 0.35), "forest": (0.08, 0.30, 0.12), "maroon": (0.35, 0.08, 0.10),
    "grey": (0.40, 0.40, 0.42), "purple": (0.28, 0.12, 0.38), "olive": (0.35, 0.35, 0.10),
}
PATTERNS = ("plain", "stripes", "checker", "gradient")
MOTIONS = ("left", "right", "up", "down", "bounces")
STORY_KINDS = ("story", "recall", "binding")


@dataclass(frozen=True)
class ShapeShotsConfig:
    """Sizes of generated stories. Tiny: 16x16 px, 4 frames, 2 shots; GPU: 64x64, 16 frames, 8 shots."""

    height: int = 16
    width: int = 16
    frames: int = 4  # per shot
    shots: int = 2
    num_entities: int = 3  # cast size per story
    num_scenes: int = 2
    max_entities_per_shot: int = 2
    pan_prob: float = 0.3
    # appearance vocabularies a story draws from (subsets make an easier task, e.g. for a CPU quickstart)
    shapes: tuple[str, ...] = SHAPES
    textures: tuple[str, ...] = TEXTURES
    patterns: tuple[str, ...] = PATTERNS
    sizes: tuple[str, ...] = SIZES
    task: str = "story"  # story kind, one of STORY_KINDS (see the module docstring)

    def __post_init__(self) -> None:
        if self.task not in STORY_KINDS:
            raise ValueError(f"task must be one of {list(STORY_KINDS)}, got {self.task!r}")
        for name, allowed in (("shapes", SHAPES), ("textures", TEXTURES), ("patterns", PATTERNS), ("sizes", SIZES)):
            chosen = tuple(getattr(self, name))
            object.__setattr__(self, name, chosen)
            if not chosen or set(chosen) - set(allowed):
                raise ValueError(f"{name} must be a non-empty subset of {list(allowed)}, got {list(chosen)}")
        for name in ("height", "width"):
            if getattr(self, name) < 8:
                raise ValueError(f"{name} must be >= 8 px, got {getattr(self, name)}")
        for name in ("frames", "shots", "num_entities", "num_scenes", "max_entities_per_shot"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.pan_prob <= 1.0:
            raise ValueError(f"pan_prob must be in [0, 1], got {self.pan_prob}")
        if self.task == "binding":
            if not 2 <= self.num_entities <= len(ENTITY_COLOURS):
                raise ValueError(f"task='binding' needs 2 <= num_entities <= {len(ENTITY_COLOURS)} (distinct colours), "
                                 f"got {self.num_entities}")
            if self.shots <= self.num_entities:
                raise ValueError(f"task='binding' introduces one entity per shot, so it needs shots > num_entities "
                                 f"for a returning shot, got shots={self.shots}, num_entities={self.num_entities}")


@dataclass
class Entity:
    id: int
    shape: str
    colour: str
    size: str
    texture: str


@dataclass
class Scene:
    id: int
    colour: str
    pattern: str
    accent: str  # second colour of the pattern


@dataclass
class ShotSpec:
    shot: int
    scene: int
    entities: list[int]
    motions: list[str]
    pan: list[int]  # camera pan (dx, dy) in px per frame
    positions: list[list[list[int]]] = field(default_factory=list)  # [entity][frame] -> [top, left]
    caption: str = ""


@dataclass
class Story:
    seed: int
    config: ShapeShotsConfig
    cast: list[Entity]
    scenes: list[Scene]
    shots: list[ShotSpec]

    @property
    def captions(self) -> list[str]:
        return [s.caption for s in self.shots]

    def metadata(self) -> dict:
        """JSON-serialisable description: cast, scenes, and which entity is where in which shot."""
        return {"seed": self.seed, "config": asdict(self.config), "cast": [asdict(e) for e in self.cast],
                "scenes": [asdict(s) for s in self.scenes], "shots": [asdict(s) for s in self.shots]}


def vocabulary(cfg: ShapeShotsConfig) -> list[str]:
    """Every word a caption of ``cfg`` can contain (the tokenizer is built from this)."""
    ids = max(cfg.shots, cfg.num_entities, cfg.num_scenes)
    words = ["shot", ":", "entity", "moves", "bounces", "in", "scene", "and", "camera", "pans",
             "left", "right", "up", "down"]
    return words + [str(i) for i in range(ids)]


def sprite_size(size: str, cfg: ShapeShotsConfig) -> int:
    base = min(cfg.height, cfg.width)
    return max(3, round(base * (0.34 if size == "small" else 0.5)))


def entity_sprite(e: Entity, cfg: ShapeShotsConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(rgb (3, s, s), mask (s, s) bool)`` of an entity, drawn in its own coordinates."""
    s = sprite_size(e.size, cfg)
    c = (np.arange(s) + 0.5) / s * 2 - 1  # pixel centres in [-1, 1]
    y, x = np.meshgrid(c, c, indexing="ij")
    mask = {
        "circle": x**2 + y**2 <= 0.95,
        "square": np.maximum(abs(x), abs(y)) <= 0.8,
        "triangle": (y >= -0.85) & (y <= 0.85) & (abs(x) <= (y + 0.85) / 1.7 * 0.95),
        "diamond": abs(x) + abs(y) <= 1.0,
        "cross": (abs(x) <= 0.3) | (abs(y) <= 0.3),
    }[e.shape]
    colour = np.array(ENTITY_COLOURS[e.colour], dtype=np.float32)[:, None, None]
    rgb = np.broadcast_to(colour, (3, s, s)).copy()
    period = max(1, s // 4)
    ii, jj = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    if e.texture == "stripes":
        dark = (ii // period) % 2 == 1
    elif e.texture == "checker":
        dark = ((ii // period) + (jj // period)) % 2 == 1
    else:
        dark = np.zeros((s, s), dtype=bool)
    rgb[:, dark] *= 0.45
    return rgb.astype(np.float32), mask


def background(scene: Scene, cfg: ShapeShotsConfig, offset: tuple[int, int]) -> np.ndarray:
    """``(3, H, W)`` background of ``scene`` seen by a camera shifted by ``offset`` = (dy, dx) px."""
    H, W = cfg.height, cfg.width
    yy, xx = np.meshgrid(np.arange(H) + offset[0], np.arange(W) + offset[1], indexing="ij")
    base = np.array(SCENE_COLOURS[scene.colour], dtype=np.float32)[:, None, None]
    accent = np.array(SCENE_COLOURS[scene.accent], dtype=np.float32)[:, None, None]
    period = max(2, min(H, W) // 4)
    if scene.pattern == "plain":
        w = np.zeros((H, W), dtype=np.float32)
    elif scene.pattern == "stripes":
        w = ((xx // period) % 2).astype(np.float32)
    elif scene.pattern == "checker":
        w = (((xx // period) + (yy // period)) % 2).astype(np.float32)
    else:  # gradient: vertical ramp that repeats every 2H px
        w = (np.abs(((yy / H) % 2.0) - 1.0)).astype(np.float32)
    return (base * (1 - w) + accent * w).astype(np.float32)


def _trajectory(rng: np.random.Generator, motion: str, cfg: ShapeShotsConfig, s: int) -> list[list[int]]:
    """Integer top-left positions per frame; the sprite starts fully inside the frame."""
    H, W, F = cfg.height, cfg.width, cfg.frames
    span_y, span_x = H - s, W - s
    speed = max(1.0, 0.6 * min(span_y, span_x) / max(F - 1, 1))
    if motion == "bounces":
        pos = np.array([rng.uniform(0, span_y), rng.uniform(0, span_x)])
        vel = np.array([rng.choice([-1, 1]), rng.choice([-1, 1])]) * speed * 1.5
    else:
        dy, dx = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}[motion]
        travel = speed * (F - 1)
        lo_y, hi_y = (travel, span_y) if dy < 0 else (0, span_y - travel) if dy > 0 else (0, span_y)
        lo_x, hi_x = (travel, span_x) if dx < 0 else (0, span_x - travel) if dx > 0 else (0, span_x)
        pos = np.array([rng.uniform(lo_y, max(lo_y, hi_y)), rng.uniform(lo_x, max(lo_x, hi_x))])
        vel = np.array([dy, dx]) * speed
    out = []
    for _ in range(F):
        out.append([round(pos[0]), round(pos[1])])
        pos = pos + vel
        if motion == "bounces":  # reflect at the walls
            for a, span in ((0, span_y), (1, span_x)):
                if pos[a] < 0 or pos[a] > span:
                    vel[a] = -vel[a]
                    pos[a] = np.clip(-pos[a] if pos[a] < 0 else 2 * span - pos[a], 0, span)
    return out


def _caption(shot: ShotSpec) -> str:
    parts = []
    for eid, motion in zip(shot.entities, shot.motions):
        parts.append(f"entity {eid} bounces" if motion == "bounces" else f"entity {eid} moves {motion}")
    text = f"shot {shot.shot} : " + " and ".join(parts) + f" in scene {shot.scene}"
    if shot.pan != [0, 0]:
        text += " camera pans " + {(0, 1): "right", (0, -1): "left", (1, 0): "down", (-1, 0): "up"}[tuple(shot.pan)]
    return text


def make_story(seed: int, cfg: ShapeShotsConfig) -> Story:
    """The story of ``seed``: cast, scenes and shot plan (no pixels yet)."""
    if cfg.task == "recall":
        return _recall_story(seed, cfg)
    if cfg.task == "binding":
        return _binding_story(seed, cfg)
    rng = np.random.default_rng(seed)
    colours = rng.permutation(list(ENTITY_COLOURS))  # distinct colours within a story
    cast = [Entity(i, str(rng.choice(cfg.shapes)), str(colours[i % len(colours)]), str(rng.choice(cfg.sizes)),
                   str(rng.choice(cfg.textures))) for i in range(cfg.num_entities)]
    bgs = rng.permutation(list(SCENE_COLOURS))
    scenes = [Scene(i, str(bgs[i % len(bgs)]), str(rng.choice(cfg.patterns)), str(bgs[(i + 1) % len(bgs)]))
              for i in range(cfg.num_scenes)]
    shots = []
    for s in range(cfg.shots):
        n = int(rng.integers(1, min(cfg.max_entities_per_shot, cfg.num_entities) + 1))
        ents = sorted(int(e) for e in rng.choice(cfg.num_entities, size=n, replace=False))
        motions = [str(rng.choice(MOTIONS)) for _ in ents]
        pan = [0, 0]
        if rng.random() < cfg.pan_prob:
            pan = [[0, 1], [0, -1], [1, 0], [-1, 0]][int(rng.integers(4))]
        spec = ShotSpec(s, int(rng.integers(cfg.num_scenes)), ents, motions, pan)
        spec.positions = [_trajectory(rng, m, cfg, sprite_size(cast[e].size, cfg)) for e, m in zip(ents, motions)]
        spec.caption = _caption(spec)
        shots.append(spec)
    return Story(seed, cfg, cast, scenes, shots)


def _recall_story(seed: int, cfg: ShapeShotsConfig) -> Story:
    """One entity and one scene, both random from the palettes, returning in every shot."""
    rng = np.random.default_rng(seed)
    entity = Entity(0, str(rng.choice(cfg.shapes)), str(rng.choice(list(ENTITY_COLOURS))), str(rng.choice(cfg.sizes)),
                    str(rng.choice(cfg.textures)))
    colour, accent = (str(c) for c in rng.permutation(list(SCENE_COLOURS))[:2])
    scene = Scene(0, colour, str(rng.choice(cfg.patterns)), accent)
    shots = []
    for s in range(cfg.shots):
        motion = str(rng.choice(MOTIONS))
        spec = ShotSpec(s, 0, [0], [motion], [0, 0])
        spec.positions = [_trajectory(rng, motion, cfg, sprite_size(entity.size, cfg))]
        spec.caption = _caption(spec)
        shots.append(spec)
    return Story(seed, cfg, [entity], [scene], shots)


def _binding_story(seed: int, cfg: ShapeShotsConfig) -> Story:
    """Entities introduced one per shot, then one of them (the captioned one) in every later shot."""
    rng = np.random.default_rng(seed)
    colours = rng.permutation(list(ENTITY_COLOURS))  # distinct within a story
    cast = [Entity(i, str(rng.choice(cfg.shapes)), str(colours[i]), str(rng.choice(cfg.sizes)),
                   str(rng.choice(cfg.textures))) for i in range(cfg.num_entities)]
    colour, accent = (str(c) for c in rng.permutation(list(SCENE_COLOURS))[:2])
    scene = Scene(0, colour, str(rng.choice(cfg.patterns)), accent)
    returning = int(rng.integers(cfg.num_entities))
    shots = []
    for s in range(cfg.shots):
        eid = s if s < cfg.num_entities else returning
        motion = str(rng.choice(MOTIONS))
        spec = ShotSpec(s, 0, [eid], [motion], [0, 0], caption=f"entity {eid}")
        spec.positions = [_trajectory(rng, motion, cfg, sprite_size(cast[eid].size, cfg))]
        shots.append(spec)
    return Story(seed, cfg, cast, [scene], shots)


def story_from_metadata(meta: dict) -> Story:
    """Rebuild a :class:`Story` from ``Story.metadata()`` (the ``ground_truth`` of a sample)."""
    try:
        cfg = ShapeShotsConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()})
        return Story(int(meta["seed"]), cfg, [Entity(**e) for e in meta["cast"]],
                     [Scene(**s) for s in meta["scenes"]], [ShotSpec(**s) for s in meta["shots"]])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"ground truth is not ShapeShots story metadata: {type(exc).__name__}: {exc}") from None


def render_story(story: Story) -> np.ndarray:
    """Pixels of ``story``: float32 ``(shots, frames, 3, H, W)`` in ``[0, 1]``."""
    cfg = story.config
    H, W = cfg.height, cfg.width
    sprites = {e.id: entity_sprite(e, cfg) for e in story.cast}
    video = np.zeros((cfg.shots, cfg.frames, 3, H, W), dtype=np.float32)
    for shot in story.shots:
        scene = story.scenes[shot.scene]
        for f in range(cfg.frames):
            # a camera pan moves the background; entities move on screen as the caption says
            frame = background(scene, cfg, (shot.pan[0] * f * 2, shot.pan[1] * f * 2))
            for eid, traj in zip(shot.entities, shot.positions):
                rgb, mask = sprites[eid]
                _paste(frame, rgb, mask, *traj[f])
            video[shot.shot, f] = frame
    return video


def _paste(frame: np.ndarray, rgb: np.ndarray, mask: np.ndarray, top: int, left: int) -> None:
    H, W = frame.shape[1:]
    s = mask.shape[0]
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + s, H), min(left + s, W)
    if y0 >= y1 or x0 >= x1:
        return
    m = mask[y0 - top:y1 - top, x0 - left:x1 - left]
    region = frame[:, y0:y1, x0:x1]
    region[:, m] = rgb[:, y0 - top:y1 - top, x0 - left:x1 - left][:, m]


def generate(seed: int, cfg: ShapeShotsConfig) -> tuple[np.ndarray, Story]:
    """``(video (S, F, 3, H, W) in [0, 1], story)`` for ``seed``; the same seed gives the same bytes."""
    story = make_story(seed, cfg)
    return render_story(story), story
