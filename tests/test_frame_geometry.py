"""Frame geometry in the layout (``frame_shape``; patch, row, column ids) and the ``cubes:t,h,w``
chunking (moc-spec §3): hand-checked examples, errors that name the bad value, the chunker against
the independent oracle on random layouts, and MoC routing over cubes against the oracle."""

from __future__ import annotations

import random

import oracle
import pytest
import torch
from conftest import draw_inputs, kind_of, layout_tag, random_layout

import mocbench
from mocbench import ChunkRule, Segment, TokenLayout
from mocbench.config import LayoutConfig


def test_frame_shape_gives_row_and_column_of_every_video_token():
    """T0[1] V0[2 frames of 2x3]: patch p sits at row p // 3, column p % 3; captions are -1."""
    lay = TokenLayout.single_shot(text_tokens=1, frames=2, frame_shape=(2, 3))
    assert lay.tokens_per_frame == 6 and lay.frame_shape == (2, 3) and lay.num_tokens == 13
    assert lay.patch_id.tolist() == [-1] + list(range(6)) * 2
    assert lay.row_id.tolist() == [-1] + [0, 0, 0, 1, 1, 1] * 2
    assert lay.col_id.tolist() == [-1] + [0, 1, 2] * 4
    assert lay.row_id is lay.row_id, "per-token ids are cached"
    assert lay.row_id.dtype == torch.int64 and lay.row_id.device.type == "cpu"


def test_frame_shape_on_every_constructor_and_config():
    a = TokenLayout.multi_shot(text_tokens=2, frames=[1, 2], frame_shape=[2, 2], shots=2)
    b = TokenLayout.multi_shot(text_tokens=2, frames=[1, 2], tokens_per_frame=4, frame_shape=(2, 2), shots=2)
    c = TokenLayout.from_segments(a.segments, frame_shape=(2, 2))
    d = LayoutConfig(shots=2, frames=[1, 2], tokens_per_frame=4, text_tokens=2, frame_shape=[2, 2]).build()
    assert a == b == c == d and hash(a) == hash(d)
    assert a != a.with_frame_shape(None) and a.with_frame_shape((4, 1)).frame_shape == (4, 1)
    assert "frame=2x2" in a.describe()
    assert LayoutConfig(shots=1, frames=2, tokens_per_frame=4, text_tokens=1).build().frame_shape is None


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(tokens_per_frame=6, frame_shape=(2, 2)), ValueError, r"\(2, 2\) has 4 tokens per frame but tokens_per_frame is 6"),
    (dict(frame_shape=(2, 0)), ValueError, r"frame_shape\[1\] \(columns\) must be >= 1, got 0"),
    (dict(frame_shape=(2, 2, 2)), TypeError, "frame_shape must be \\(h, w\\)"),
    (dict(frame_shape="2x2"), TypeError, "frame_shape must be \\(h, w\\)"),
    (dict(frame_shape=(2.0, 2)), TypeError, r"frame_shape\[0\] \(rows\) must be an int"),
    (dict(), ValueError, "give tokens_per_frame=P or frame_shape"),
])
def test_frame_shape_errors_name_the_value(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        TokenLayout.single_shot(text_tokens=1, frames=2, **kwargs)


def test_geometry_is_required_where_it_is_used():
    lay = TokenLayout.single_shot(text_tokens=1, frames=2, tokens_per_frame=4)
    assert lay.patch_id.tolist() == [-1, 0, 1, 2, 3, 0, 1, 2, 3]  # needs no geometry
    with pytest.raises(ValueError, match=r"no frame geometry .* frame_shape=\(h, w\)"):
        _ = lay.row_id
    with pytest.raises(ValueError, match=r"cubes:1,2,2 needs the frame geometry"):
        lay.chunks("cubes:1,2,2")


@pytest.mark.parametrize("bad", ["cubes", "cubes:2", "cubes:2,2", "cubes:0,1,1", "cubes:1,x,1", "cubes:1,1,1,1"])
def test_bad_cubes_rule_names_the_rule(bad):
    with pytest.raises(ValueError, match="cubes:t,h,w needs three positive integers"):
        ChunkRule.parse(bad)


def test_cubes_rule_parses_and_prints():
    r = ChunkRule.parse("cubes:2,4,4")
    assert (r.kind, r.dims, r.n, str(r)) == ("cubes", (2, 4, 4), 32, "cubes:2,4,4")
    assert r.content_aligned and not r.contiguous


def test_cubes_hand_example_partial_tiles_and_order():
    """V0[3 frames of 3x4] under cubes:2,2,3: tiles (frames {0,1},{2}) x (rows {0,1},{2}) x (cols {0-2},{3});
    they are numbered by first token, so frame tile, then row tile, then column tile."""
    lay = TokenLayout.single_shot(text_tokens=0, frames=3, frame_shape=(3, 4))
    ct = lay.chunks("cubes:2,2,3")
    frame0 = [0, 0, 0, 1, 0, 0, 0, 1, 2, 2, 2, 3]
    frame2 = [4, 4, 4, 5, 4, 4, 4, 5, 6, 6, 6, 7]
    assert ct.chunk_id.tolist() == frame0 + frame0 + frame2
    assert ct.sizes.tolist() == [12, 4, 6, 2, 6, 2, 3, 1]
    for c in range(ct.num_chunks):
        members = ct.token_index[ct.offsets[c]:ct.offsets[c + 1]]
        assert torch.all(ct.chunk_id[members] == c)
    assert torch.all(ct.order[1:] > ct.order[:-1])


CUBE_RULES = ("cubes:1,1,1", "cubes:1,2,2", "cubes:2,1,3", "cubes:2,2,2", "cubes:3,3,4", "cubes:9,9,9")
GEO_LAYOUTS = [(kind_of(i), random_layout(random.Random(700 + i), kind_of(i), geometry=True)) for i in range(10)]


@pytest.mark.parametrize("rule", CUBE_RULES)
@pytest.mark.parametrize("kind,layout", GEO_LAYOUTS, ids=[f"{k}-{layout_tag(l)}" for k, l in GEO_LAYOUTS])
def test_cubes_chunk_table_matches_oracle_chunker(kind, layout, rule):
    """layout.chunks("cubes:t,h,w"): chunk of every token, order, sizes, caption flags and shots
    equal the oracle's chunker written from moc-spec §3; tiles never cross a shot."""
    ref = oracle.chunks(layout, rule)
    ct = layout.chunks(rule)
    assert ct.chunk_id.tolist() == oracle.chunk_of(ref, layout.num_tokens)
    assert ct.order.tolist() == [c[0] for c in ref]
    assert ct.sizes.tolist() == [len(c) for c in ref]
    toks = oracle.tokens(layout)
    assert ct.is_text.tolist() == [toks[c[0]].is_text for c in ref]
    assert torch.all((ct.shot_overlap > 0).sum(1) == 1)


MOC_CUBE_CASES = [(i, random_layout(random.Random(900 + i), kind_of(i), geometry=True),
                   ("cubes:1,2,2", "cubes:2,1,2", "cubes:2,2,3")[i % 3], (0, 1, 2, 3)[i % 4], i % 2 == 0)
                  for i in range(8)]


@pytest.mark.parametrize("i,layout,rule,top_k,causal", MOC_CUBE_CASES,
                         ids=[f"c{c[0]}-{c[2]}-k{c[3]}-causal{int(c[4])}" for c in MOC_CUBE_CASES])
def test_moc_over_cubes_matches_oracle(i, layout, rule, top_k, causal):
    """MoC routes over cube chunks exactly as the oracle (pattern, float32 output, measured pairs);
    the reference and gather impls agree with it."""
    params = dict(top_k=top_k, chunking=rule, causal=causal)
    q, k, v, _ = draw_inputs((1, 2, layout.num_tokens, 8), 4000 + i, layout, params)
    want = oracle.moc_mask(q.double(), k.double(), layout, **params)
    for impl in ("reference", "gather"):
        moc = mocbench.get_backend("moc", impl=impl, **params)
        assert torch.equal(moc.attention_pattern(q, k, layout), want)
        err = float((moc(q, k, v, layout).double() - oracle.attend(q, k, v, want)).abs().max())
        assert err <= 1e-5, f"{impl}: max abs error {err:.3g}"
        assert moc.stats(q, k, layout).pairs == oracle.pairs(want)


def test_segments_with_geometry_validate_the_product():
    segs = [Segment("video", 0, frames=1, tokens_per_frame=6)]
    assert TokenLayout.from_segments(segs, frame_shape=(3, 2)).frame_shape == (3, 2)
    with pytest.raises(ValueError, match="has 4 tokens per frame but tokens_per_frame is 6"):
        TokenLayout.from_segments(segs, frame_shape=(2, 2))
