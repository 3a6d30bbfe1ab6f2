"""ShapeShots generator and data modules: determinism, long-range identities, captions by id only,
sizes from tiny to GPU scale, and the folder data module on a generated mp4."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mocbench.tasks.shapeshots import (
    ENTITY_COLOURS,
    SCENE_COLOURS,
    SHAPES,
    ShapeShotsConfig,
    entity_sprite,
    generate,
    sprite_size,
)

TINY = ShapeShotsConfig(height=16, width=16, frames=4, shots=2)
STORY = ShapeShotsConfig(height=24, width=24, frames=4, shots=6, num_entities=3, num_scenes=2)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread (and a busy 2-core box thrashes with more)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_same_seed_same_story_different_seed_different_story():
    a, sa = generate(7, TINY)
    b, sb = generate(7, TINY)
    c, _sc = generate(8, TINY)
    assert a.dtype == np.float32 and a.shape == (2, 4, 3, 16, 16) and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, b) and sa.metadata() == sb.metadata()
    assert not np.array_equal(a, c)
    json.dumps(sa.metadata())  # metadata is JSON-serialisable


def test_cast_is_drawn_per_story():
    looks = {(s.cast[0].shape, s.cast[0].colour, s.cast[0].texture) for s in (generate(i, TINY)[1] for i in range(12))}
    assert len(looks) > 3, "entity 0 must look different across stories, or ids would give appearance away"


def test_captions_name_entities_and_scenes_by_id_only():
    words = set(SHAPES) | set(ENTITY_COLOURS) | set(SCENE_COLOURS) | {"solid", "stripes", "checker", "small", "large"}
    for seed in range(10):
        _, story = generate(seed, STORY)
        for shot in story.shots:
            assert shot.caption.startswith(f"shot {shot.shot} : entity ")
            assert not set(shot.caption.split()) & words, shot.caption
            for e in shot.entities:
                assert f"entity {e} " in shot.caption
            assert f"scene {shot.scene}" in shot.caption


def _visible_crops(video, story, eid):
    """Crops (3, s, s) of entity ``eid`` from every frame where it is fully inside the frame and no
    other entity overlaps it, keyed by shot."""
    cfg = story.config
    s = sprite_size(story.cast[eid].size, cfg)
    out = {}
    for shot in story.shots:
        if eid not in shot.entities:
            continue
        j = shot.entities.index(eid)
        for f in range(cfg.frames):
            top, left = shot.positions[j][f]
            if not (0 <= top and 0 <= left and top + s <= cfg.height and left + s <= cfg.width):
                continue
            others = [shot.positions[k][f] for k in range(len(shot.entities)) if k != j]
            s_other = [sprite_size(story.cast[shot.entities[k]].size, cfg) for k in range(len(shot.entities)) if k != j]
            if any(abs(o[0] - top) < max(s, so) and abs(o[1] - left) < max(s, so) for o, so in zip(others, s_other)):
                continue
            out.setdefault(shot.shot, video[shot.shot, f, :, top:top + s, left:left + s])
    return out


def test_recurring_entities_keep_their_appearance_across_shots():
    """Ground truth for the long-range memory test: wherever a recurring entity is fully visible, its
    pixels (under its shape mask) are identical in every shot, on different backgrounds; and two
    entities of a story never look the same."""
    checked = 0
    for seed in range(30):
        video, story = generate(seed, STORY)
        sprites = [entity_sprite(e, STORY) for e in story.cast]
        for e in story.cast:
            crops = _visible_crops(video, story, e.id)
            mask = sprites[e.id][1]
            first = next(iter(crops.values()), None)
            for crop in crops.values():
                assert np.array_equal(crop[:, mask], first[:, mask]), f"seed {seed} entity {e.id} changed"
                assert np.array_equal(crop[:, mask], sprites[e.id][0][:, mask])
            checked += len(crops) >= 2
        colours = [e.colour for e in story.cast]
        assert len(set(colours)) == len(colours)
    assert checked >= 20, f"only {checked} recurring entities were checkable"


@pytest.mark.parametrize("cfg", [ShapeShotsConfig(height=16, width=16, frames=4, shots=2),
                                 ShapeShotsConfig(height=64, width=64, frames=16, shots=8, num_entities=5,
                                                  num_scenes=4)], ids=["tiny", "gpu"])
def test_sizes_from_tiny_to_gpu_scale(cfg):
    video, story = generate(0, cfg)
    assert video.shape == (cfg.shots, cfg.frames, 3, cfg.height, cfg.width)
    assert len(story.shots) == cfg.shots and all(len(p) == cfg.frames for s in story.shots for p in s.positions)


def test_bad_generator_config_names_the_field():
    with pytest.raises(ValueError, match="height must be >= 8"):
        ShapeShotsConfig(height=4)
    with pytest.raises(ValueError, match="pan_prob"):
        ShapeShotsConfig(pan_prob=2.0)


def test_datamodules_batches():
    from mocbench.tasks.data import ShapeShotsDataModule, SingleShotDataModule

    dm = ShapeShotsDataModule(TINY, text_tokens=18, train_size=8, val_size=4, batch_size=4)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (4, 2, 4, 3, 16, 16) and batch["text"].shape == (4, 2, 18)
    assert -1 <= batch["video"].min() and batch["video"].max() <= 1
    assert len(batch["meta"]) == 4 and dm.tokenizer.decode(batch["text"][0, 0].tolist()) == batch["captions"][0][0]
    single = SingleShotDataModule(ShapeShotsConfig(shots=1), text_tokens=12, train_size=4, batch_size=2)
    single.setup()
    assert next(iter(single.train_dataloader()))["video"].shape == (2, 1, 4, 3, 16, 16)
    with pytest.raises(ValueError, match="shots=1"):
        SingleShotDataModule(TINY)


def _write_clip(path, colours, frames_each=6, size=32):
    import imageio.v2 as imageio

    seq = []
    for c in colours:
        seq += [np.full((size, size, 3), c, np.uint8)] * frames_each
    imageio.mimwrite(str(path), seq, fps=8, codec="libx264", quality=9, macro_block_size=1, ffmpeg_log_level="error")


def test_folder_datamodule_reads_mp4_and_jsonl(tmp_path):
    from mocbench.tasks.folder import FolderDataModule

    _write_clip(tmp_path / "a.mp4", [(230, 20, 20), (20, 20, 230)])
    _write_clip(tmp_path / "b.mp4", [(20, 230, 20), (230, 230, 20)])
    rows = [{"video": "a.mp4", "captions": ["a red room", "a blue room"], "shots": [[0, 6], [6, 12]]},
            {"video": "b.mp4", "captions": ["a green room", "a yellow room"], "shots": [[0, 6], [6, 12]]}]
    (tmp_path / "clips.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dm = FolderDataModule(str(tmp_path), shots=2, frames=3, height=16, width=16, text_tokens=4, batch_size=2,
                          val_fraction=0.5)
    dm.setup()
    item = dm.val_set[0]
    assert item["video"].shape == (2, 3, 3, 16, 16)
    rgb = item["video"].mean(dim=(1, 3, 4))  # (shots, 3)
    assert rgb[0, 0] > 0.5 > rgb[0, 2] and rgb[1, 2] > 0.5 > rgb[1, 0], "shot 0 red, shot 1 blue"
    assert dm.tokenizer.decode(item["text"][1].tolist()) == "a blue room"
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (1, 2, 3, 3, 16, 16)

    (tmp_path / "bad.jsonl").write_text(json.dumps({"video": "a.mp4", "captions": ["x"], "shots": [[0, 6]]}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: has 1 shots, the config asks for shots=2"):
        FolderDataModule(str(tmp_path), index="bad.jsonl", shots=2)
    (tmp_path / "missing.jsonl").write_text(json.dumps({"video": "zz.mp4", "captions": ["x"], "shots": [[0, 6]]}))
    with pytest.raises(ValueError, match="'zz.mp4' not found"):
        FolderDataModule(str(tmp_path), index="missing.jsonl", shots=1)


def test_tokenizer_roundtrip_and_null():
    from mocbench.tasks.text import Tokenizer

    tok = Tokenizer.from_texts(["shot 0 : entity 1 moves left in scene 0"])
    ids = tok.encode("shot 0 : entity 1 moves left in scene 0", 12)
    assert len(ids) == 12 and ids[-1] == tok.pad_id and tok.decode(ids) == "shot 0 : entity 1 moves left in scene 0"
    assert tok.encode("entity 9", 3)[1] == 2  # unknown word -> <unk>
    assert torch.equal(tok.null_like(torch.zeros(2, 3, dtype=torch.long)), torch.ones(2, 3, dtype=torch.long))


def test_consistency_proxy_separates_same_and_different_ids_on_ground_truth():
    from mocbench.tasks.consistency import summarize

    cfg = ShapeShotsConfig(shots=4, max_entities_per_shot=1, pan_prob=0.0, textures=("solid",))
    stories = [generate(s, cfg) for s in range(20)]
    gt = summarize([torch.from_numpy(v) * 2 - 1 for v, _ in stories], [st.metadata() for _, st in stories])
    assert gt["same_scene_l1"]["mean"] < 0.1 and gt["diff_scene_l1"]["mean"] > 1.0
    assert gt["same_entity_colour_match"]["mean"] == 1.0 and gt["diff_entity_colour_match"]["mean"] == 0.0
    g = torch.Generator().manual_seed(0)
    noise = summarize([torch.rand(v.shape, generator=g) * 2 - 1 for v, _ in stories], [st.metadata() for _, st in stories])
    assert abs(noise["same_scene_l1"]["mean"] - noise["diff_scene_l1"]["mean"]) < 0.2
