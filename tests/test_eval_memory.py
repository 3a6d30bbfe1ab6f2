"""The ``memory`` evaluator of ``mocbench eval`` is the position-free recall of mocbench/eval/recall.py:
ground truth scores 1 through the mp4 round trip, a recoloured returning entity is a miss, a constant
grey video scores 0 (the old ground-truth-mask probe scored it 1), and what it cannot score is skipped
with the reason."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eval_fakes import write_sample_set

from mocbench.eval.recall import RecallPlan, story_plan
from mocbench.eval.runner import Skip, _memory
from mocbench.eval.samples import SampleSet
from mocbench.tasks.shapeshots import ENTITY_COLOURS, ShapeShotsConfig, generate, story_from_metadata


def test_metadata_round_trip_rebuilds_the_same_story():
    _video, story = generate(0, ShapeShotsConfig(shots=4, task="binding", num_entities=3))
    again = story_from_metadata(json.loads(json.dumps(story.metadata())))
    assert again.metadata() == story.metadata()
    with pytest.raises(ValueError, match="not ShapeShots story metadata"):
        story_from_metadata({"seed": 0})


def test_story_plan_pairs_a_shot_with_the_first_earlier_shot_of_its_single_entity():
    cfg = ShapeShotsConfig(shots=6, num_entities=2, num_scenes=2, max_entities_per_shot=2)
    for seed in range(20):
        _, story = generate(seed, cfg)
        plan = story_plan(story)
        for shot in story.shots:
            k, src = shot.shot, plan.entity_source[shot.shot]
            alone_before = [s.shot for s in story.shots[:k] if s.entities == shot.entities and len(shot.entities) == 1]
            assert src == (alone_before[0] if alone_before else -1)
            same_scene = [s.shot for s in story.shots[:k] if s.scene == shot.scene]
            assert plan.scene_source[k] == (same_scene[0] if same_scene else -1)
    assert RecallPlan.recall(3) == story_plan(generate(0, ShapeShotsConfig(shots=3, task="recall"))[1])


def test_ground_truth_samples_score_one_after_the_mp4_round_trip(tmp_path):
    r = _memory(SampleSet.load(write_sample_set(tmp_path / "gt", num=6)), None)
    assert r["entity_recall"] == 1.0 and r["scene_recall"] == 1.0 and r["entity_found"] == 1.0
    assert r["pairs"] >= 6 and 0 < r["chance"] < 1


def _recolour_returning(video, story):
    """Paint every later appearance of a recurring entity in another palette colour."""
    plan = story_plan(story)
    for k, src in enumerate(plan.entity_source):
        if src >= 0:
            own = np.array(ENTITY_COLOURS[story.cast[story.shots[k].entities[0]].colour], dtype=np.float32)
            other = next(np.array(c, dtype=np.float32) for c in ENTITY_COLOURS.values() if not np.allclose(c, own))
            px = video[k].transpose(0, 2, 3, 1)  # (F, H, W, 3) view
            px[np.isclose(px, own, atol=1e-6).all(-1)] = other
    return video


def test_recoloured_returning_entity_is_a_miss_and_grey_scores_zero_not_one(tmp_path):
    edited = _memory(SampleSet.load(write_sample_set(tmp_path / "edit", num=6, edit=_recolour_returning)), None)
    assert edited["entity_recall"] == 0.0 and edited["scene_recall"] == 1.0

    def grey(video, story):
        return np.full_like(video, 0.5)

    r = _memory(SampleSet.load(write_sample_set(tmp_path / "grey", num=6, edit=grey)), None)
    assert r["entity_recall"] == 0.0 and r["entity_found"] == 0.0


def test_what_cannot_be_scored_is_skipped_with_the_reason(tmp_path):
    one_shot = ShapeShotsConfig(shots=1, textures=("solid",), patterns=("plain",))
    with pytest.raises(Skip, match="single-shot"):
        _memory(SampleSet.load(write_sample_set(tmp_path / "single", num=2, cfg=one_shot)), None)
    root = write_sample_set(tmp_path / "nometa", num=2)
    meta = json.loads((root / "metadata.json").read_text())
    for s in meta["samples"]:
        s.pop("ground_truth")
    (root / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(Skip, match="no ShapeShots story metadata"):
        _memory(SampleSet.load(root), None)
    never_alone = ShapeShotsConfig(shots=2, num_entities=1, max_entities_per_shot=1, task="story", num_scenes=1,
                                   textures=("solid",), patterns=("plain",))
    with pytest.raises(Skip, match="1 of 1 stories show an entity alone in two shots"):
        _memory(SampleSet.load(write_sample_set(tmp_path / "one", num=1, cfg=never_alone)), None)
