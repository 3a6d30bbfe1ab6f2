"""TokenLayout and chunking (moc-spec §2-3): ids, chunk rules on hand-checked layouts, errors."""

import pytest
import torch

from mocbench import ChunkRule, Segment, TokenLayout


def two_shots() -> TokenLayout:
    # T0[2] V0[2 frames x 4] T1[3] V1[3 frames x 4]  -> L = 25
    return TokenLayout.multi_shot(text_tokens=[2, 3], frames=[2, 3], tokens_per_frame=4)


def test_single_shot_ids_are_caption_then_frames():
    lay = TokenLayout.single_shot(text_tokens=3, frames=2, tokens_per_frame=2)
    assert lay.num_tokens == 7 and lay.num_shots == 1
    assert lay.modality.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert lay.frame_id.tolist() == [-1, -1, -1, 0, 0, 1, 1]
    assert lay.shot_id.tolist() == [0] * 7


def test_interleaved_and_front_placements_order_segments():
    inter = two_shots()
    assert [(s.kind, s.shot) for s in inter.segments] == [("text", 0), ("video", 0), ("text", 1), ("video", 1)]
    front = TokenLayout.multi_shot(text_tokens=[5], frames=[2, 1], tokens_per_frame=3, text_placement="front")
    assert [(s.kind, s.shot) for s in front.segments] == [("text", 0), ("video", 0), ("video", 1)]
    assert front.shot_id.tolist() == [0] * 5 + [0] * 6 + [1] * 3
    assert front.frame_id.tolist() == [-1] * 5 + [0, 0, 0, 1, 1, 1] + [0, 0, 0]


def test_back_placement_puts_the_caption_after_the_video_owned_by_the_last_shot():
    """text_placement="back": single-shot video then caption (HunyuanVideo, Mochi); multi-shot: every
    shot's video, then one global caption owned by the last shot, so shot ids never decrease."""
    single = TokenLayout.single_shot(text_tokens=3, frames=2, tokens_per_frame=2, text_placement="back")
    assert [(s.kind, s.shot) for s in single.segments] == [("video", 0), ("text", 0)]
    assert single.modality.tolist() == [1, 1, 1, 1, 0, 0, 0]
    assert single.frame_id.tolist() == [0, 0, 1, 1, -1, -1, -1]
    assert TokenLayout.multi_shot(text_tokens=[3], frames=[2], tokens_per_frame=2, text_placement="back") == single
    back = TokenLayout.multi_shot(text_tokens=5, frames=[2, 1, 1], tokens_per_frame=3, text_placement="back")
    assert [(s.kind, s.shot) for s in back.segments] == [("video", 0), ("video", 1), ("video", 2), ("text", 2)]
    shot = back.shot_id.tolist()
    assert shot == [0] * 6 + [1] * 3 + [2] * 3 + [2] * 5
    assert all(b >= a for a, b in zip(shot, shot[1:]))
    assert back.frame_id.tolist() == [0, 0, 0, 1, 1, 1] + [0] * 3 + [0] * 3 + [-1] * 5
    assert back.chunks("frame").is_text.tolist() == [False] * 4 + [True]
    no_text = TokenLayout.multi_shot(text_tokens=[0], frames=[1, 1], tokens_per_frame=2, text_placement="back")
    assert [(s.kind, s.shot) for s in no_text.segments] == [("video", 0), ("video", 1)]


def test_single_shot_placement_is_validated_and_front_is_the_default():
    front = TokenLayout.single_shot(text_tokens=2, frames=1, tokens_per_frame=2)
    assert TokenLayout.single_shot(text_tokens=2, frames=1, tokens_per_frame=2, text_placement="front") == front
    assert TokenLayout.single_shot(text_tokens=2, frames=1, tokens_per_frame=2, text_placement="interleaved") == front
    with pytest.raises(ValueError, match="text_placement must be one of .* got 'last'"):
        TokenLayout.single_shot(text_tokens=2, frames=1, tokens_per_frame=2, text_placement="last")


def test_int_arguments_broadcast_over_shots():
    a = TokenLayout.multi_shot(text_tokens=4, frames=3, tokens_per_frame=2, shots=3)
    b = TokenLayout.multi_shot(text_tokens=[4, 4, 4], frames=[3, 3, 3], tokens_per_frame=2)
    assert a == b and hash(a) == hash(b)


def test_zero_length_caption_is_omitted():
    lay = TokenLayout.multi_shot(text_tokens=[0, 2], frames=[1, 1], tokens_per_frame=2)
    assert [(s.kind, s.shot) for s in lay.segments] == [("video", 0), ("text", 1), ("video", 1)]


@pytest.mark.parametrize(
    "rule, expected_ids",
    [
        ("shot", [0, 0] + [1] * 8 + [2] * 3 + [3] * 12),
        ("frame", [0, 0] + [1] * 4 + [2] * 4 + [3] * 3 + [4] * 4 + [5] * 4 + [6] * 4),
        ("frames:2", [0, 0] + [1] * 8 + [2] * 3 + [3] * 8 + [4] * 4),
        ("tokens:5", [0, 0] + [1] * 5 + [2] * 3 + [3] * 3 + [4] * 5 + [5] * 5 + [6] * 2),
        # fixed:5 cuts the 20 video tokens every 5 regardless of shots; chunk 2 spans both shots
        # and skips over the caption of shot 1 (chunk 3), so its tokens are not contiguous.
        ("fixed:5", [0, 0] + [1] * 5 + [2] * 3 + [3] * 3 + [2] * 2 + [4] * 5 + [5] * 5),
    ],
)
def test_chunk_rules_on_hand_checked_layout(rule, expected_ids):
    ct = two_shots().chunks(rule)
    assert ct.chunk_id.tolist() == expected_ids
    assert int(ct.sizes.sum()) == 25
    assert torch.all(ct.order[1:] > ct.order[:-1]), "chunks are numbered by first-token position"


def test_chunk_table_tables_are_consistent():
    lay = two_shots()
    ct = lay.chunks("fixed:5")
    assert ct.is_text.tolist() == [True, False, False, True, False, False]
    assert ct.shot_overlap[2].tolist() == [3, 2]
    for c in range(ct.num_chunks):
        members = ct.token_index[ct.offsets[c]:ct.offsets[c + 1]]
        assert torch.all(ct.chunk_id[members] == c)


def test_tokens_rule_never_crosses_a_shot():
    lay = TokenLayout.multi_shot(text_tokens=[1, 1], frames=[3, 3], tokens_per_frame=3)
    ct = lay.chunks("tokens:4")
    assert torch.all((ct.shot_overlap > 0).sum(1) == 1)


def test_chunkings_are_cached_per_rule():
    lay = two_shots()
    assert lay.chunks("frame") is lay.chunks("frame")
    assert lay.chunks("frame") is lay.chunks(ChunkRule.parse("frame"))


@pytest.mark.parametrize("bad", ["tile", "frames", "frames:0", "tokens:-3", "shot:2", "fixed:x", ""])
def test_bad_chunking_names_the_rule_and_accepted_forms(bad):
    with pytest.raises(ValueError, match="chunking") as e:
        ChunkRule.parse(bad)
    assert repr(bad) in str(e.value) or "positive integer" in str(e.value)


def test_non_string_chunking_is_a_type_error():
    with pytest.raises(TypeError, match="chunking must be a string"):
        ChunkRule.parse(4)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(text_tokens=4, frames=0, tokens_per_frame=4), ValueError, "frames must be >= 1, got 0"),
        (dict(text_tokens=-1, frames=2, tokens_per_frame=4), ValueError, "text_tokens must be >= 0, got -1"),
        (dict(text_tokens=4, frames=2.0, tokens_per_frame=4), TypeError, "frames must be an int"),
        (dict(text_tokens=4, frames=2, tokens_per_frame=True), TypeError, "tokens_per_frame must be an int"),
    ],
)
def test_single_shot_errors_name_the_argument(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        TokenLayout.single_shot(**kwargs)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(text_tokens=[1, 2], frames=[1, 2, 3], tokens_per_frame=2), ValueError, "one text_tokens entry per shot"),
        (dict(text_tokens=[1, 2], frames=[1], tokens_per_frame=2, text_placement="front"), ValueError, "1 entry"),
        (dict(text_tokens=[1], frames=[1], tokens_per_frame=2, text_placement="middle"), ValueError,
         "text_placement must be one of"),
        (dict(text_tokens=[1, 2], frames=[1, 1], tokens_per_frame=2, text_placement="back"), ValueError, "1 entry"),
        (dict(text_tokens=[1], frames=[], tokens_per_frame=2), ValueError, "frames must not be empty"),
        (dict(text_tokens=[1], frames="12", tokens_per_frame=2), TypeError, "frames must be a list"),
        (dict(text_tokens=[1], frames=[1, -2], tokens_per_frame=2, text_placement="front"), ValueError,
         r"frames\[1\] must be >= 1"),
        (dict(text_tokens=2, frames=3, tokens_per_frame=2), ValueError, "pass shots=N"),
        (dict(text_tokens=2, frames=[3, 3], tokens_per_frame=2, shots=3), ValueError, "shots=3 but frames has 2"),
    ],
)
def test_multi_shot_errors_name_the_argument(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        TokenLayout.multi_shot(**kwargs)


def test_from_segments_validates_shot_structure():
    with pytest.raises(ValueError, match="exactly one video segment"):
        TokenLayout.from_segments([Segment("text", 0, tokens=2)])
    with pytest.raises(ValueError, match="share tokens_per_frame"):
        TokenLayout.from_segments([Segment("video", 0, frames=1, tokens_per_frame=2),
                                   Segment("video", 1, frames=1, tokens_per_frame=3)])
    with pytest.raises(ValueError, match="segment kind"):
        Segment("audio", 0, tokens=2)


def test_layout_config_keeps_text_placement_for_one_shot():
    """A single-shot config with text_placement=back builds caption-last, never silently caption-first."""
    from mocbench.config import LayoutConfig

    back = LayoutConfig(shots=1, frames=2, tokens_per_frame=4, text_tokens=3, text_placement="back").build()
    front = LayoutConfig(shots=1, frames=2, tokens_per_frame=4, text_tokens=3, text_placement="front").build()
    assert back.segments[0].kind == "video" and back.segments[-1].kind == "text"
    assert front.segments[0].kind == "text"
