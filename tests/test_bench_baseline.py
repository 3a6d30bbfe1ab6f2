"""The committed per-device pytest-benchmark baseline (benchmarks/baselines/baseline.py): update writes
``<device slug>.json``; compare passes within the threshold, fails beyond it or against another torch/CUDA,
reports new and gone benchmarks, and without a baseline says how to create one (exit 0)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("baseline", Path(__file__).parents[1] / "benchmarks/baselines/baseline.py")
baseline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(baseline)


def _bench_json(path: Path, medians: dict[str, float], torch: str = "2.11.0+cu128") -> Path:
    path.write_text(json.dumps({
        "machine_info": {"mocbench": {"device": "NVIDIA H100 80GB HBM3", "torch": torch, "cuda": "12.8"}},
        "commit_info": {"id": "abc123"},
        "benchmarks": [{"fullname": name, "stats": {"median": m, "iqr": m / 10, "rounds": 5}}
                       for name, m in medians.items()]}))
    return path


def test_update_then_compare(tmp_path, capsys):
    run = _bench_json(tmp_path / "a.json", {"t[dense]": 1.0e-3, "t[moc]": 2.0e-3, "t[old]": 1.0})
    assert baseline.main(["compare", str(run), "--dir", str(tmp_path)]) == 0
    assert "no committed baseline for NVIDIA H100 80GB HBM3" in capsys.readouterr().out
    assert baseline.main(["update", str(run), "--dir", str(tmp_path)]) == 0
    stored = json.loads((tmp_path / "nvidia-h100-80gb-hbm3.json").read_text())
    assert stored["torch"] == "2.11.0+cu128" and stored["benchmarks"]["t[moc]"]["median_s"] == 2.0e-3
    capsys.readouterr()

    ok = _bench_json(tmp_path / "b.json", {"t[dense]": 1.10e-3, "t[moc]": 1.5e-3, "t[new]": 1.0})
    assert baseline.main(["compare", str(ok), "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ok         t[dense]" in out and "+10.0%" in out and "new        t[new]" in out and "gone       t[old]" in out

    slow = _bench_json(tmp_path / "c.json", {"t[dense]": 1.20e-3, "t[moc]": 2.0e-3})
    assert baseline.main(["compare", str(slow), "--dir", str(tmp_path)]) == 1
    assert "REGRESSED  t[dense]" in capsys.readouterr().out
    assert baseline.main(["compare", str(slow), "--dir", str(tmp_path), "--threshold", "0.25"]) == 0

    other_torch = _bench_json(tmp_path / "d.json", {"t[dense]": 1.0e-3}, torch="2.12.0+cu128")
    assert baseline.main(["compare", str(other_torch), "--dir", str(tmp_path)]) == 1
    assert "measured with torch '2.11.0+cu128', this run has '2.12.0+cu128'" in capsys.readouterr().out


def test_a_run_without_device_info_is_refused(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"machine_info": {}, "benchmarks": []}))
    with pytest.raises(SystemExit, match="no 'mocbench' entry"):
        baseline.main(["compare", str(p)])
    assert baseline.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
