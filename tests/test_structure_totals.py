"""The analytic MoC accounting reads per-class totals, never the Q x C tables: the totals must be
exactly those tables' row sums, on every layout kind, chunking and anchor setting."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from conftest import LAYOUT_KINDS, MOC_RULES, random_layout

from mocbench.anchors import build_anchor_structure, candidate_totals


@pytest.mark.parametrize("i", range(40))
def test_candidate_totals_equal_the_tables_row_sums(i):
    rng = random.Random(9000 + i)
    layout = random_layout(rng, LAYOUT_KINDS[i % len(LAYOUT_KINDS)])
    rule = MOC_RULES[i % len(MOC_RULES)]
    for text_anchor, local_anchor, causal in itertools.product([True, False], ["shot", "chunk"], [True, False]):
        st = build_anchor_structure(layout, rule, text_anchor=text_anchor, local_anchor=local_anchor, causal=causal)
        n_cand, keys = candidate_totals(st.classes, causal=causal)
        where = (layout.describe(), rule, text_anchor, local_anchor, causal)
        assert torch.equal(n_cand, st.candidate.sum(1)), where
        assert torch.equal(keys, (st.uncovered * st.candidate).sum(1)), where
        ct = st.chunks  # classes are exactly the non-zero (chunk, shot) overlaps, every token in its own
        assert torch.equal(st.class_size, ct.shot_overlap[st.class_chunk, st.class_shot]), where
        assert int((ct.shot_overlap > 0).sum()) == st.num_classes, where
        assert torch.equal(st.class_chunk[st.token_class], ct.chunk_id), where
        assert torch.equal(st.class_shot[st.token_class], layout.shot_id), where


@pytest.mark.parametrize("i", range(10))
def test_chunk_shot_is_the_shot_of_each_chunks_first_token(i):
    layout = random_layout(random.Random(i), LAYOUT_KINDS[i % len(LAYOUT_KINDS)])
    ct = layout.chunks("fixed:4")
    first = [int(ct.token_index[ct.offsets[c]]) for c in range(ct.num_chunks)]  # sorted by position per chunk
    assert ct.chunk_shot.tolist() == [int(layout.shot_id[p]) for p in first]
