"""The recall and binding tasks (ShapeShots ``task=recall`` / ``binding``) and the position-free recall
evaluator (mocbench/eval/recall.py): ground truth keeps its appearances and scores 1, a recoloured
returning entity scores chance, a wrongly bound one scores as a distractor, a blank video scores 0,
chance and the clustered test are right."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from mocbench.eval.recall import (
    NOT_FOUND,
    PALETTE_NAMES,
    RecallPlan,
    bootstrap_interval,
    chance_rate,
    evaluate_recall,
    shot_colours,
    story_plan,
    two_proportion_test,
)
from mocbench.tasks.shapeshots import ENTITY_COLOURS, ShapeShotsConfig, generate, render_story

RECALL = ShapeShotsConfig(height=16, width=16, frames=2, shots=4, task="recall", shapes=("square",),
                          textures=("solid",), patterns=("plain",))


def _videos(seeds, cfg=RECALL):
    return np.stack([generate(s, cfg)[0] for s in seeds])


def test_recall_stories_are_deterministic_and_keep_entity_and_scene_in_every_shot():
    a, story = generate(3, RECALL)
    b, _ = generate(3, RECALL)
    assert np.array_equal(a, b)
    assert len(story.cast) == 1 and len(story.scenes) == 1
    assert all(s.entities == [0] and s.scene == 0 and s.pan == [0, 0] for s in story.shots)
    # from the pixels: every shot shows the entity's colour and the scene's colour
    ent = np.array(ENTITY_COLOURS[story.cast[0].colour], dtype=np.float32)
    for shot in a:
        px = shot.transpose(0, 2, 3, 1).reshape(-1, 3)
        assert np.isclose(px, ent, atol=1e-6).all(-1).sum() >= 9
    looks = {(generate(s, RECALL)[1].cast[0].colour, generate(s, RECALL)[1].scenes[0].colour) for s in range(20)}
    assert len(looks) > 5, "colours must be drawn per story, or shot 0 would not need to be remembered"


def test_unknown_story_kind_is_refused_naming_the_value():
    with pytest.raises(ValueError, match="task must be one of .*'recal'"):
        ShapeShotsConfig(task="recal")


def test_task_config_selects_recall_stories():
    from mocbench.config import ConfigError
    from mocbench.tasks.config import load_task_config
    from mocbench.tasks.train import shapes_config

    cfg = load_task_config(None, ["data.task=recall", "data.shots=3", "data.frames=2"])
    assert shapes_config(cfg).task == "recall"
    with pytest.raises(ConfigError, match="data.task"):
        load_task_config(None, ["data.task=nope"])


def test_ground_truth_scores_one():
    r = evaluate_recall(_videos(range(16)))
    assert r.entity_recall == 1.0 and r.scene_recall == 1.0 and r.entity_found == 1.0
    assert (r.entity_lo, r.entity_hi) == (1.0, 1.0)
    assert 0 < r.chance < 0.5, "different stories draw different colours"


def test_recoloured_returning_entity_scores_chance():
    """Later shots show the entity in an independently drawn colour: no memory -> chance."""
    rng = np.random.default_rng(0)
    videos = []
    for seed in range(64):
        _, story = generate(seed, RECALL)
        video = render_story(story)
        for k in range(1, RECALL.shots):
            other = copy.deepcopy(story)
            other.cast[0].colour = str(rng.choice(list(ENTITY_COLOURS)))
            video[k] = render_story(other)[k]
        videos.append(video)
    r = evaluate_recall(np.stack(videos))
    assert r.scene_recall == 1.0
    assert r.entity_lo <= r.chance <= r.entity_hi
    assert r.entity_recall < 0.3


def test_constant_grey_finds_nothing_and_scores_zero_not_one():
    grey = np.full((8, 4, 2, 3, 16, 16), 0.5, dtype=np.float32)
    r = evaluate_recall(grey)
    assert r.entity_recall == 0.0 and r.entity_found == 0.0 and r.chance == 0.0
    assert r.scene_recall == r.scene_chance, "a constant scene is as likely across stories: no evidence of memory"


def test_palette_radii_do_not_overlap():
    from mocbench.eval.recall import PALETTE, RADII

    gaps = np.linalg.norm(PALETTE[:, None] - PALETTE[None], axis=-1)
    i, j = np.triu_indices(len(PALETTE), 1)
    assert (RADII[i] + RADII[j] <= gaps[i, j] + 1e-6).all() and RADII.min() > 0.09


def test_entity_found_from_pixels_not_positions():
    v = _videos([5])
    ent, scene = shot_colours(v)
    _, story = generate(5, RECALL)
    assert PALETTE_NAMES[ent[0, 0]] == story.cast[0].colour and PALETTE_NAMES[scene[0, 0]] == story.scenes[0].colour
    v[0, 2, :, :, :, :] = v[0, 2, :, :, :1, :1]  # shot 2 painted with its corner (background) colour
    ent, _ = shot_colours(v)
    assert ent[0, 2] == NOT_FOUND and ent[0, 1] != NOT_FOUND


def test_chance_on_a_known_case():
    # story A: shot 0 red(0), later [0, 1]; story B: shot 0 blue(1), later [1, 1]; C: nothing found in shot 0
    colours = np.array([[0, 0, 1], [1, 1, 1], [NOT_FOUND, 0, 1]])
    # later shots vs other stories' shot 0 (6 ordered pairs x 2 shots = 12 comparisons):
    # A vs B: [0,1]==1 -> 1; A vs C: 0; B vs A: 0; B vs C: 0; C vs A: [0,1]==0 -> 1; C vs B: 1 -> 1
    assert chance_rate(colours) == pytest.approx(3 / 12)


def test_two_proportion_test_uses_story_clustered_errors():
    same = np.array([1.0, 0.0] * 20)
    z, p = two_proportion_test(same, same)
    assert z == 0 and p == 1.0
    lo = np.array([0.0, 0.25] * 20)
    z, p = two_proportion_test(same, lo)
    assert z > 0 and p < 1e-4
    # perfectly clustered stories (all-or-nothing) are noisier than independent pairs
    clustered = np.array([1.0] * 12 + [0.0] * 8)
    spread = np.array([0.6] * 20)
    assert two_proportion_test(clustered, spread * 0)[1] > two_proportion_test(spread, spread * 0)[1]


def test_bootstrap_interval_covers_the_mean_and_needs_two_stories():
    x = np.r_[np.ones(30), np.zeros(10)]
    lo, hi = bootstrap_interval(x)
    assert lo < 0.75 < hi and 0.5 < lo and hi < 0.95
    with pytest.raises(ValueError, match=">= 2 stories"):
        bootstrap_interval(np.ones(1))


BINDING = ShapeShotsConfig(height=16, width=16, frames=2, shots=6, task="binding", num_entities=3,
                           shapes=("square",), textures=("solid",), patterns=("plain",))


def _dominant_entity_colour(shot: np.ndarray) -> str:
    px = shot.transpose(0, 2, 3, 1).reshape(-1, 3)
    counts = {name: int(np.isclose(px, c, atol=1e-6).all(-1).sum()) for name, c in ENTITY_COLOURS.items()}
    return max(counts, key=counts.get)


def test_binding_stories_introduce_each_entity_then_return_the_captioned_one():
    a, story = generate(11, BINDING)
    assert np.array_equal(a, generate(11, BINDING)[0])
    colours = [e.colour for e in story.cast]
    assert len(story.cast) == 3 and len(set(colours)) == 3, "distinct colours: the distractors are distinguishable"
    returning = {tuple(s.entities) for s in story.shots[3:]}
    assert len(returning) == 1
    (r,) = returning.pop()
    for shot in story.shots:
        eid = shot.shot if shot.shot < 3 else r
        assert shot.entities == [eid] and shot.caption == f"entity {eid}" and shot.scene == 0
        # from the pixels: each shot shows its entity's colour; later shots repeat the returning entity's intro shot
        assert _dominant_entity_colour(a[shot.shot]) == colours[eid]
    assert {_dominant_entity_colour(a[k]) for k in range(3, 6)} == {_dominant_entity_colour(a[r])}
    assert len({generate(s, BINDING)[1].shots[-1].entities[0] for s in range(30)}) == 3, "the returning entity varies"


def test_binding_config_errors_name_the_values():
    with pytest.raises(ValueError, match="shots > num_entities.*shots=3, num_entities=3"):
        ShapeShotsConfig(task="binding", shots=3, num_entities=3)
    with pytest.raises(ValueError, match="num_entities <= 8.*got 9"):
        ShapeShotsConfig(task="binding", shots=12, num_entities=9)


def _binding_videos(seeds, recolour=None):
    """Ground-truth binding stories; ``recolour(story) -> colour name`` repaints the later shots."""
    videos, plans = [], []
    for seed in seeds:
        _, story = generate(seed, BINDING)
        if recolour is not None:
            story.cast[story.shots[-1].entities[0]].colour = recolour(story)
            video = render_story(story)
            video[: BINDING.num_entities] = generate(seed, BINDING)[0][: BINDING.num_entities]  # intro shots as before
        else:
            video = render_story(story)
        videos.append(video)
        plans.append(story_plan(story))
    return np.stack(videos), plans


def test_binding_ground_truth_scores_one_with_no_distractor_and_wrong_binding_scores_distractor():
    videos, plans = _binding_videos(range(24))
    assert all(p.entity_source[3:] == (p.entity_source[3],) * 3 and p.entity_source[:3] == (-1,) * 3 for p in plans)
    r = evaluate_recall(videos, plans)
    assert r.entity_recall == 1.0 and r.distractor == 0.0 and r.pairs == 24 * 3
    assert 0 < r.chance < 0.3
    # later shots drawn in a non-returning entity's colour: memory of colours without the caption's binding
    wrong = lambda story: next(e.colour for e in story.cast if e.id != story.shots[-1].entities[0])
    videos, plans = _binding_videos(range(24), recolour=wrong)
    r = evaluate_recall(videos, plans)
    assert r.entity_recall == 0.0 and r.distractor == 1.0 and (r.distractor_lo, r.distractor_hi) == (1.0, 1.0)
    # recall stories have no distractors: the column is empty, not 0
    assert np.isnan(evaluate_recall(_videos(range(4))).distractor)


def test_chance_with_per_story_source_shots_on_a_known_case():
    # 3 stories, 3 shots; story a's shot 2 recalls shot src[a]
    colours = np.array([[0, 1, 1], [1, 0, 0], [2, 2, 1]])
    src = np.array([[-1, -1, 1], [-1, -1, 0], [-1, -1, 0]])
    # a=0: colour 1 vs shot 1 of b=1 (0), b=2 (2) -> 0; a=1: colour 0 vs shot 0 of b=0 (0) yes, b=2 (2) -> 1/2;
    # a=2: colour 1 vs shot 0 of b=0 (0), b=1 (1) yes -> 1/2
    assert chance_rate(colours, src) == pytest.approx((0 + 0.5 + 0.5) / 3)


def test_too_few_scored_stories_is_an_error_for_entities_and_nan_for_scenes():
    videos = _videos(range(4))
    no_scene = RecallPlan(entity_source=(-1, 0, 0, 0), scene_source=(-1,) * 4, distractors=((),) * 4)
    r = evaluate_recall(videos, [no_scene] * 4)
    assert r.entity_recall == 1.0 and np.isnan(r.scene_recall) and np.isnan(r.scene_chance)
    nothing = RecallPlan(entity_source=(-1,) * 4, scene_source=(-1, 0, 0, 0), distractors=((),) * 4)
    with pytest.raises(ValueError, match=r"recall needs >= 2 stories with a scored shot \(an entity seen alone"):
        evaluate_recall(videos, [nothing, nothing, no_scene, nothing])
    with pytest.raises(ValueError, match="3 plans for 4 videos"):
        evaluate_recall(videos, [no_scene] * 3)
