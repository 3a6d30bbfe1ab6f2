"""Bench configs: unknown keys, wrong types and bad values fail naming the key; cells expand and hash stably."""

from pathlib import Path

import pytest

from mocbench.bench.config import expand_cells, load_bench_config
from mocbench.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("override, message", [
    ("timing.repats=3", "timing.repats"),
    ("workloads.0.hedas=2", "workloads.0.hedas"),
    ("workloads.0.heads=x", "workloads.0.heads"),
    ("workloads.0.dtype=float8", "workloads[0].dtype must be one of"),
    ("workloads.0.device=tpu", "workloads[0].device must be one of"),
    ("workloads.0.passes=[bwd]", "workloads[0].passes"),
    ("workloads.0.shots=[0]", "workloads[0].shots"),
    ("backends.4.params.top_k=-1", "backends[4] (moc): top_k must be >= 0, got -1"),
    ("backends.0.name=nope", "unknown backend 'nope'"),
    ("timing.repeats=0", "repeats"),
])
def test_bad_bench_config_names_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_bench_config(str(ROOT / "configs/bench/cpu_quick.yaml"), [override])
    assert message in str(e.value)


def test_unknown_key_in_yaml_list_entry_names_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("workloads:\n  - {name: w, shots: [1], tokens_per_frme: 4}\n")
    with pytest.raises(ConfigError, match="tokens_per_frme"):
        load_bench_config(str(path))


def test_duplicate_backend_labels_are_refused():
    with pytest.raises(ConfigError, match="duplicate labels"):
        load_bench_config(None, ["backends=[{name: dense}, {name: dense}]"])


@pytest.mark.parametrize("path", sorted((ROOT / "configs/bench").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_load_and_expand(path):
    cfg = load_bench_config(str(path))
    cells = expand_cells(cfg)
    assert len({c.key for c in cells}) == len(cells), "every cell needs its own key"
    assert cells == expand_cells(load_bench_config(str(path))), "keys must be stable across loads"


def test_cell_key_changes_with_repeats_but_not_with_output():
    base = expand_cells(load_bench_config(None))[0].key
    assert expand_cells(load_bench_config(None, ["output=/elsewhere.csv"]))[0].key == base
    assert expand_cells(load_bench_config(None, ["timing.repeats=3"]))[0].key != base
