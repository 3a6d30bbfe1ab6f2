"""Accounting (moc-spec §7): FLOP formulas, analytic == measured where the spec says, scale checks."""

import time

import pytest
import torch

import mocbench
from mocbench import TokenLayout


def rand_qk(layout, b=2, h=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, layout.num_tokens, d, generator=g) for _ in range(2))


def test_flop_formulas_follow_the_spec():
    lay = TokenLayout.multi_shot(text_tokens=[3, 3], frames=[2, 2], tokens_per_frame=4)
    L, D, B, H = lay.num_tokens, 8, 2, 3
    s = mocbench.estimate(lay, "moc", head_dim=D, batch=B, heads=H, top_k=1, chunking="frame")
    C = lay.chunks("frame").num_chunks
    assert s.attention_flops == 4 * D * s.pairs
    assert s.routing_flops == B * H * 2 * L * C * D
    assert s.pooling_flops == B * H * L * D
    assert s.dense_flops == B * H * 4 * L * L * D
    assert s.total_flops == s.attention_flops + s.routing_flops + s.pooling_flops
    assert s.sparsity == pytest.approx(1 - s.pairs / (B * H * L * L))
    assert s.backward_attention_flops == 2.5 * s.attention_flops
    assert s.flops_reduction == s.dense_flops / s.total_flops


@pytest.mark.parametrize(
    "layout_kw, params",
    [
        # equal-sized chunks: analytic must equal measured exactly
        (dict(text_tokens=[4] * 4, frames=[3] * 4, tokens_per_frame=5), dict(top_k=2, chunking="frame")),
        (dict(text_tokens=[4] * 4, frames=[3] * 4, tokens_per_frame=5), dict(top_k=2, chunking="frame", causal=False)),
        (dict(text_tokens=[4] * 3, frames=[4] * 3, tokens_per_frame=3), dict(top_k=3, chunking="frames:2")),
        (dict(text_tokens=[2] * 3, frames=[4] * 3, tokens_per_frame=3), dict(top_k=1, chunking="tokens:6",
                                                                             local_anchor="chunk")),
        (dict(text_tokens=[2] * 3, frames=[2] * 3, tokens_per_frame=4), dict(top_k=2, chunking="shot")),
        (dict(text_tokens=[4], frames=[3] * 3, tokens_per_frame=4, text_placement="front"),
         dict(top_k=4, chunking="frame", text_anchor=False)),
        # top_k larger than any candidate set: every candidate is selected, so exact for any sizes
        (dict(text_tokens=[2, 5], frames=[3, 2], tokens_per_frame=3), dict(top_k=50, chunking="tokens:4")),
        (dict(text_tokens=[0], frames=[6], tokens_per_frame=4, text_placement="front"), dict(top_k=0)),
    ],
)
def test_analytic_equals_measured_when_the_spec_says_so(layout_kw, params):
    lay = TokenLayout.multi_shot(**layout_kw)
    b = mocbench.get_backend("moc", **params)
    q, k = rand_qk(lay)
    assert b.stats(q, k, lay) == b.estimate(lay, head_dim=8, batch=2, heads=2)


def test_analytic_is_close_for_ragged_chunks():
    lay = TokenLayout.multi_shot(text_tokens=[8] * 6, frames=[5] * 6, tokens_per_frame=7)
    b = mocbench.get_backend("moc", top_k=3, chunking="tokens:9")  # last chunk of each shot is short
    q, k = rand_qk(lay, b=1, h=4, d=16)
    measured = b.stats(q, k, lay)
    analytic = b.estimate(lay, head_dim=16, batch=1, heads=4)
    assert measured.pairs != analytic.pairs  # genuinely ragged
    assert abs(measured.pairs - analytic.pairs) / measured.pairs < 0.05


def test_moc_without_routing_costs_the_same_as_shot_local():
    lay = TokenLayout.multi_shot(text_tokens=[3] * 3, frames=[2] * 3, tokens_per_frame=4)
    a = mocbench.estimate(lay, "moc", head_dim=8, top_k=0, local_anchor="shot")
    b = mocbench.estimate(lay, "shot_local", head_dim=8)
    assert (a.pairs, a.total_flops) == (b.pairs, b.total_flops)


def test_paper_multishot_scale_matches_table2_order_of_magnitude():
    lay = TokenLayout.multi_shot(text_tokens=128, frames=24, tokens_per_frame=936, shots=8)
    s = mocbench.estimate(lay, "moc", head_dim=128, top_k=5, chunking="tokens:1280")
    assert 175_000 < s.tokens < 185_000
    assert s.dense_flops == pytest.approx(1.7e13, rel=0.03)  # 4 L^2 D
    assert 0.80 < s.sparsity < 0.90  # paper: 85%
    assert 1.8e12 < s.total_flops < 3.2e12  # paper: 2.3e12


def test_paper_singleshot_scale_matches_table1_order_of_magnitude():
    lay = TokenLayout.single_shot(text_tokens=128, frames=24, tokens_per_frame=260)
    s = mocbench.estimate(lay, "moc", head_dim=128, top_k=3, chunking="frame")
    assert s.dense_flops == pytest.approx(2.0e10, rel=0.1)  # paper: 1.9e10
    assert 0.78 < s.sparsity < 0.88  # paper: 83%
    assert 2.5e9 < s.total_flops < 5.5e9  # paper: 4.1e9


def test_million_token_layout_is_accounted_without_quadratic_work():
    """Guards against an O(L^2) analytic path (which would need ~1e12 operations / 1 TB here).
    Not a speed test: the bound is loose on purpose (typical: ~0.3 s on one idle core)."""
    t0 = time.process_time()
    lay = TokenLayout.multi_shot(text_tokens=256, frames=64, tokens_per_frame=1560, shots=10)
    s = mocbench.estimate(lay, "moc", head_dim=128, top_k=8, chunking="frame")
    elapsed = time.process_time() - t0
    assert lay.num_tokens > 1_000_000
    assert 0 < s.sparsity < 1
    assert elapsed < 20.0, f"analytic accounting of {lay.num_tokens} tokens took {elapsed:.1f}s of CPU"


@pytest.mark.parametrize("kw, match", [
    (dict(head_dim=0), "head_dim must be a positive int, got 0"),
    (dict(head_dim=64, batch=0), "batch must be a positive int, got 0"),
    (dict(head_dim=64, heads=2.5), "heads must be a positive int, got 2.5"),
])
def test_estimate_validates_its_arguments(kw, match):
    lay = TokenLayout.single_shot(text_tokens=2, frames=2, tokens_per_frame=2)
    with pytest.raises(ValueError, match=match):
        mocbench.estimate(lay, "moc", **kw)


def test_sum_stats_adds_calls_exactly_even_of_different_lengths():
    """sum_stats (layers, steps, samples un-padded to different lengths): pairs and FLOPs add up, and sparsity
    is 1 - sum(pairs) / sum(B*H*L^2) exactly; calls of one length give a plain AttentionStats."""
    from mocbench.stats import AttentionStats, sum_stats

    a = AttentionStats(2, 3, 10, 8, pairs=400, routing_flops=5, pooling_flops=1, num_chunks=4)
    b = AttentionStats(1, 3, 7, 8, pairs=100, routing_flops=2, pooling_flops=1, num_chunks=3)
    same = sum_stats([a, a])
    assert same == AttentionStats(4, 3, 10, 8, pairs=800, routing_flops=10, pooling_flops=2, num_chunks=4)
    mixed = sum_stats([a, b])
    assert mixed.pairs == 500 and mixed.total_flops == a.total_flops + b.total_flops
    assert mixed.dense_pairs == 2 * 3 * 100 + 3 * 49
    assert mixed.sparsity == 1 - 500 / (600 + 147)
    assert mixed.mean_keys_per_query == 500 / (2 * 3 * 10 + 3 * 7)
    assert mixed.dense_flops == a.dense_flops + b.dense_flops
    assert sum_stats([mixed, a]).dense_pairs == mixed.dense_pairs + a.dense_pairs
    with pytest.raises(ValueError, match=r"one heads; got heads = \[3, 4\]"):
        sum_stats([a, AttentionStats(1, 4, 10, 8, pairs=1)])
    with pytest.raises(ValueError, match="at least one"):
        sum_stats([])
