"""Memory probe: the ground truth is consistent; swapping a recurring entity's colour in one shot is caught."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mocbench.eval.memory import entity_masks, memory_scores, story_from_metadata, story_memory
from mocbench.tasks.shapeshots import ENTITY_COLOURS, ShapeShotsConfig, generate

CFG = ShapeShotsConfig(height=16, width=16, frames=3, shots=4, num_entities=2, num_scenes=2, max_entities_per_shot=1,
                       pan_prob=0.0, textures=("solid",), patterns=("plain",))


def recurring_story(seed: int = 0):
    """A story whose entity 0 or 1 appears in at least two shots (searching seeds from ``seed``)."""
    for s in range(seed, seed + 100):
        video, story = generate(s, CFG)
        for e in story.cast:
            shots = [sh.shot for sh in story.shots if e.id in sh.entities]
            if len(shots) >= 2:
                return video, story, e, shots
    raise AssertionError("no story with a recurring entity")


def test_metadata_round_trip_rebuilds_the_same_story():
    _video, story, *_ = recurring_story()
    again = story_from_metadata(json.loads(json.dumps(story.metadata())))
    assert again.metadata() == story.metadata()


def test_ground_truth_is_consistent_and_every_entity_is_identified():
    video, story, *_ = recurring_story()
    r = story_memory(video, story)
    assert r["identity_consistency"] == pytest.approx(1.0, abs=1e-6)
    assert r["identity_accuracy"] == 1.0 and r["recurring_entities"] >= 1


def test_swapped_entity_colour_in_one_shot_lowers_identity_consistency_and_accuracy():
    video, story, entity, shots = recurring_story()
    masks = entity_masks(story)
    other = next(e for e in story.cast if e.id != entity.id)
    wrong = np.array(ENTITY_COLOURS[other.colour], dtype=np.float32)
    edited = video.copy()
    m = masks[(shots[-1], entity.id)]  # (F, H, W): repaint the entity in its last shot
    frames = edited[shots[-1]].transpose(0, 2, 3, 1)
    frames[m] = wrong
    edited[shots[-1]] = frames.transpose(0, 3, 1, 2)
    before, after = story_memory(video, story), story_memory(edited, story)
    assert after["identity_consistency"] < before["identity_consistency"] - 0.1
    assert after["identity_accuracy"] < before["identity_accuracy"]


def test_memory_scores_report_the_ground_truth_ceiling_and_check_shapes():
    video, story, *_ = recurring_story()
    out = memory_scores([np.full_like(video, 0.5)], [story])
    assert out["gt_identity_consistency"] == pytest.approx(1.0, abs=1e-6)
    assert out["identity_accuracy"] <= out["gt_identity_accuracy"]
    with pytest.raises(ValueError, match="does not match the story"):
        story_memory(video[:, :2], story)
    with pytest.raises(ValueError, match="not ShapeShots story metadata"):
        story_from_metadata({"seed": 0})
