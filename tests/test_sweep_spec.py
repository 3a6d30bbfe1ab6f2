"""Sweep spec expansion (grid, zip, ablations, overrides) and clear errors for bad specs."""

from __future__ import annotations

import pytest

from mocbench.config import ConfigError
from mocbench.sweep.spec import SweepConfig, cell_key, expand, load_sweep

BASE = """
name: t
out_dir: {out}
base:
  stages: [bench]
  backend: {{name: moc, params: {{top_k: 1, chunking: frame}}}}
  bench: {{shots: 2, frames: 2, tokens_per_frame: 8, text_tokens: 4, heads: 1, head_dim: 16, repeats: 1}}
"""


def _write(tmp_path, extra: str) -> str:
    p = tmp_path / "s.yaml"
    p.write_text(BASE.format(out=tmp_path / "out") + extra)
    return str(p)


def test_grid_is_cartesian_and_zip_parallel(tmp_path):
    cfg = load_sweep(_write(tmp_path, """
grid: {backend.params.top_k: [1, 2, 3], seed: [0, 1]}
zip: {backend.params.chunking: [frame, "tokens:4"], bench.frames: [2, 4]}
"""))
    cells = expand(cfg)
    assert len(cells) == 3 * 2 * 2
    combos = {(c.config.backend.params["top_k"], c.config.seed, c.config.backend.params["chunking"], c.config.bench.frames)
              for c in cells}
    assert len(combos) == 12
    assert all((ch, f) in {("frame", 2), ("tokens:4", 4)} for _, _, ch, f in combos)
    assert len({c.key for c in cells}) == 12


def test_overrides_and_stable_keys(tmp_path):
    path = _write(tmp_path, "grid: {backend.params.top_k: [1, 2]}\n")
    a = expand(load_sweep(path))
    b = expand(load_sweep(path))
    assert [c.key for c in a] == [c.key for c in b]  # stable across loads
    c = expand(load_sweep(path, ["base.backend.params.causal=false", "grid.seed=[5]"]))
    assert all(x.config.backend.params["causal"] is False and x.config.seed == 5 for x in c)
    assert {x.key for x in c}.isdisjoint({x.key for x in a})


def test_ablations_share_identical_cells(tmp_path):
    cfg = load_sweep(_write(tmp_path, """
ablations:
  top_k: {grid: {backend.params.top_k: [1, 2]}}
  causal: {grid: {backend.params.causal: [true, false]}}
  ref: {set: {backend.name: dense, backend.params: {}}}
"""))
    cells = expand(cfg)
    # top_k=1 + causal=true (default) are the same resolved config -> one cell in two ablations
    assert len(cells) == 4
    shared = [c for c in cells if len(c.ablations) == 2]
    assert len(shared) == 1 and set(shared[0].ablations) == {"top_k", "causal"}
    assert any(c.config.backend.name == "dense" and c.config.backend.params == {} for c in cells)


@pytest.mark.parametrize("extra, words", [
    ("grid: {backend.nmae: [moc]}\n", ["backend.nmae"]),
    ("grid: {bench.frmes: [1]}\n", ["bench.frmes"]),
    ("grid: {backend.params.top_kk: [1]}\n", ["top_kk"]),
    ("grid: {backend.params.top_k: []}\n", ["grid.backend.params.top_k", "empty"]),
    ("zip: {seed: [1, 2], backend.params.top_k: [1]}\n", ["zip", "equal lengths", "seed"]),
    ("grid: {seed: 3}\n", ["grid.seed", "list"]),
    ("grid: {stages: [[trian]]}\n", ["stages", "trian"]),
    ("ablations: {a: {grid: {backend.params.top_k: []}}}\n", ["ablations.a.grid.backend.params.top_k", "empty"]),
    ("grid: {sample.num: [abc]}\n", ["sample.num"]),
])
def test_bad_specs_name_the_key(tmp_path, extra, words):
    with pytest.raises(ConfigError) as exc:
        load_sweep(_write(tmp_path, extra))
    for w in words:
        assert w in str(exc.value), str(exc.value)


def test_sample_without_train_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="train"):
        load_sweep(_write(tmp_path, ""), ["base.stages=[sample]"])


def test_key_is_a_hash_of_the_resolved_config():
    cfg = SweepConfig()
    (a,) = expand(cfg)
    assert a.key == cell_key(a.config) and len(a.key) == 16
