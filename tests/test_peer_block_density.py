"""Block density (moc-spec §10) of the peer families, counted from their group plans (no L x L tensor),
against the blocks of the oracle's pattern: stream order for radial / vmoba / svg, the kernels' tile-major
order for sliding_tile and vsa; the static families' analytic figure equals the measured one."""

from __future__ import annotations

import random

import oracle_peers
import pytest
import torch
from conftest import qkv, random_layout

import mocbench
from mocbench.blocks import pattern_block_density

CASES = [("sliding_tile", dict(tile="1,2,2", window="3,1,3")), ("radial", dict(dense_frames=0, sink=False)),
         ("vmoba", dict(layer=2, st_chunk="2,1,2", select="topk", top_k=2)), ("vsa", dict(cube="2,2,2", top_k=2)),
         ("svg", dict(width=1.0, num_samples=4))]


@pytest.mark.parametrize("name,params", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("block_shape", [(4, 4), (8, 16), (5, 3)], ids=str)
def test_block_density_equals_blocks_of_the_pattern(name, params, block_shape):
    layout = random_layout(random.Random(31), "interleaved", geometry=True)
    q, k, _ = qkv((2, 2, layout.num_tokens, 8), 9)
    backend = mocbench.get_backend(name, **params)
    pattern = backend.attention_pattern(q, k, layout)
    if name in ("sliding_tile", "vsa"):  # the kernel's tile-major order
        rule = f"cubes:{params['tile' if name == 'sliding_tile' else 'cube']}"
        order = torch.tensor([t for c in oracle_peers.chunk_members(layout, rule) for t in c])
        pattern = pattern[:, :, order][:, :, :, order]
    want = pattern_block_density(pattern, block_shape)
    got = backend.stats(q, k, layout, block_shape=block_shape).block_density
    assert got == pytest.approx(want, abs=1e-12)
    if name in ("sliding_tile", "radial"):
        assert backend.estimate(layout, head_dim=8, block_shape=block_shape).block_density == pytest.approx(want)
