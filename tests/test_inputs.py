"""Input validation at the boundary: bad tensors, layouts and scales give errors naming the value."""

import re

import pytest
import torch

import mocbench
from mocbench import TokenLayout

LAY = TokenLayout.multi_shot(text_tokens=[2, 2], frames=[2, 2], tokens_per_frame=3)  # L = 16


def qkv(shape=(1, 2, 16, 8), dtype=torch.float32):
    return [torch.randn(shape, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("name", ["dense", "moc", "shot_local", "frame_window", "strided"])
def test_token_count_must_match_layout(name):
    q, k, v = qkv((1, 2, 15, 8))
    with pytest.raises(ValueError, match="q has 15 tokens but the layout has 16"):
        mocbench.get_backend(name)(q, k, v, LAY)


def test_tensors_must_be_4d_same_shape_dtype_and_float():
    b = mocbench.get_backend("moc", top_k=1)
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"q must be 4-D .* got shape \(2, 16, 8\)"):
        b(q[0], k, v, LAY)
    with pytest.raises(ValueError, match="v has shape"):
        b(q, k, v[:, :1], LAY)
    with pytest.raises(TypeError, match="k has dtype torch.float64 but q has torch.float32"):
        b(q, k.double(), v, LAY)
    with pytest.raises(TypeError, match="q must be a floating tensor"):
        b(q.int(), k.int(), v.int(), LAY)
    with pytest.raises(TypeError, match="layout must be a mocbench.TokenLayout"):
        b(q, k, v, [2, 2])


@pytest.mark.parametrize("scale", [-1.0, 0.0, 0, float("inf"), float("nan"), True, "0.1"])
@pytest.mark.parametrize("name", ["dense", "moc"])
def test_scale_must_be_finite_and_positive(name, scale):
    """scale=inf used to pass and return NaN; every entry (call and prepare) refuses it, naming the value."""
    q, k, v = qkv()
    b = mocbench.get_backend(name)
    with pytest.raises(ValueError, match=rf"scale must be a finite float > 0 or None .*got {re.escape(repr(scale))}"):
        b(q, k, v, LAY, scale=scale)
    with pytest.raises(ValueError, match="scale must be a finite float > 0"):
        b.prepare(q, k, LAY, scale=scale)


def test_custom_scale_is_honoured():
    q, k, v = qkv()
    out = mocbench.get_backend("dense")(q, k, v, LAY, scale=0.3)
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3))


def test_attention_pattern_refuses_huge_sizes():
    lay = TokenLayout.single_shot(text_tokens=0, frames=40, tokens_per_frame=1000)
    q = torch.randn(1, 1, lay.num_tokens, 1)
    with pytest.raises(ValueError, match="attention_pattern would materialise"):
        mocbench.get_backend("moc").attention_pattern(q, q, lay)


def test_stats_need_no_dense_mask_at_moderate_scale():
    """stats() counts pairs from the routing plan (Q x C tables), never an L x L tensor."""
    lay = TokenLayout.multi_shot(text_tokens=16, frames=8, tokens_per_frame=256, shots=4)  # L = 8256
    q = torch.randn(1, 1, lay.num_tokens, 16)
    s = mocbench.get_backend("moc", top_k=2).stats(q, q, lay)
    assert s.tokens == lay.num_tokens and 0.5 < s.sparsity < 1
