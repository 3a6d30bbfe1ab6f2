"""Routing introspection on a tiny layout, checked by hand against plan.selected."""

from __future__ import annotations

import json

import pytest
import torch

import mocbench
from mocbench import TokenLayout
from mocbench.sweep.routing import LayerStats, RoutingRecorder, install, summary


def _layout():
    # 3 shots x (2 caption tokens + 3 frames x 4 tokens) = 42 tokens
    return TokenLayout.multi_shot(text_tokens=2, frames=3, tokens_per_frame=4, shots=3)


def _qkv(layout, B=2, H=2, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, layout.num_tokens, D, generator=g) for _ in range(3)]


def _by_hand(plan):
    """Per (b, h): S x S counts of routed slots, by looping over every query and slot."""
    sel = plan.selected
    B, H, L, _K = sel.shape
    S = plan.layout.num_shots
    chunk_shot = plan.structure.chunks.chunk_shot.tolist()
    shot = plan.layout.shot_id.tolist()
    out = torch.zeros(B, H, S, S, dtype=torch.int64)
    for b in range(B):
        for h in range(H):
            for i in range(L):
                for c in sel[b, h, i].tolist():
                    if c >= 0:
                        out[b, h, shot[i], chunk_shot[c]] += 1
    return out


@pytest.mark.parametrize("causal", [True, False])
def test_counts_match_hand_count(causal):
    layout = _layout()
    backend = mocbench.get_backend("moc", top_k=2, chunking="frame", causal=causal, local_anchor="chunk")
    q, k, v = _qkv(layout)
    store: dict[int, LayerStats] = {}
    rec = RoutingRecorder(backend, 0, store)
    out = rec(q, k, v, layout)
    torch.testing.assert_close(out, backend(q, k, v, layout), rtol=0, atol=0)  # outputs untouched
    plan = backend.prepare(q, k, layout)
    hand = _by_hand(plan)
    st = store[0]
    assert torch.equal(st.counts, hand.sum(0))
    valid = int((plan.selected >= 0).sum())
    assert int(st.counts.sum()) == st.slots == valid
    B, H, L, K = plan.selected.shape
    assert st.queries == B * H * L and valid <= B * H * L * K
    # directed / mutual pairs per (b, h), by hand
    off = (hand > 0) & ~torch.eye(3, dtype=torch.bool)
    assert st.directed == int(off.sum())
    assert st.mutual == int((off & off.transpose(-1, -2)).sum()) // 2
    assert st.units == B * H and st.calls == 1
    assert st.pairs == backend.plan_stats(plan).pairs and 0 < 1 - st.pairs / st.dense_pairs < 1
    if causal:  # never routes to a later shot, so no shot pair is mutual
        for a in range(3):
            for b in range(a + 1, 3):
                assert int(st.counts[:, a, b].sum()) == 0
        assert st.mutual == 0


def test_noncausal_routing_can_be_mutual_and_summary():
    layout = _layout()
    backend = mocbench.get_backend("moc", top_k=3, chunking="frame", causal=False, local_anchor="shot")
    store: dict[int, LayerStats] = {}
    rec = RoutingRecorder(backend, 1, store)
    for seed in range(3):
        rec(*_qkv(layout, seed=seed), layout)
    st = store[1]
    assert st.calls == 3 and st.mutual > 0
    # local_anchor=shot: own-shot chunks are anchors, so every routed slot goes to another shot
    assert int(st.counts.diagonal(dim1=-2, dim2=-1).sum()) == 0
    s = summary(store, backend="moc", params={"causal": False})
    json.dumps(s)
    assert s["total"]["cross_shot_fraction"] == 1.0 and s["shots"] == 3
    assert s["total"]["mutual_rate"] == st.mutual / st.units


def test_text_counts_and_dense_is_not_recorded():
    layout = _layout()
    store: dict[int, LayerStats] = {}
    RoutingRecorder(mocbench.get_backend("dense"), 0, store)(*_qkv(layout), layout)
    assert store == {}
    backend = mocbench.get_backend("moc", top_k=5, chunking="frame", causal=False, text_anchor=False,
                                   local_anchor="chunk")
    RoutingRecorder(backend, 0, store)(*_qkv(layout), layout)
    st = store[0]
    assert int(st.text_counts.sum()) > 0 and bool((st.text_counts <= st.counts).all())


def test_install_wraps_every_layer():
    from mocbench.tasks.model import DiTShape, ModelConfig, VideoDiT

    model = VideoDiT(DiTShape(model=ModelConfig(dim=32, depth=2, heads=2)), "moc", {"top_k": 1, "chunking": "frame"})
    store: dict[int, LayerStats] = {}
    install(model, store)
    install(model, store)  # idempotent
    assert [blk.attn.backend.layer for blk in model.blocks] == [0, 1]
    assert all(isinstance(blk.attn.backend.backend, type(model.backend)) for blk in model.blocks)
