"""The real VBench through its own virtualenv: missing weights are skipped rows naming the file, and
temporal flickering (no weights) really runs when the env exists (``make vbench-env``)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from eval_fakes import write_sample_set

from mocbench.eval.samples import SampleSet
from mocbench.eval.vbench_proxy import temporal_flickering
from mocbench.eval.vbench_real import DIMENSIONS, VBenchSettings, missing_weights, run_vbench

VBENCH_PYTHON = os.environ.get("MOCBENCH_VBENCH_PYTHON",
                               str(Path(__file__).resolve().parents[1] / ".venv-vbench" / "bin" / "python"))


def _vbench_env_reason() -> str | None:
    if not Path(VBENCH_PYTHON).is_file():
        return f"no VBench env at {VBENCH_PYTHON} (build it with `make vbench-env`)"
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vbench') is None)"
    probe = subprocess.run([VBENCH_PYTHON, "-c", code], capture_output=True, text=True, check=False)
    return None if probe.returncode == 0 else f"vbench is not installed in {VBENCH_PYTHON} (`make vbench-env`)"


def test_missing_weights_are_named_per_dimension(tmp_path):
    s = VBenchSettings(cache_dir=str(tmp_path / "cache"), torch_home=str(tmp_path / "torch"))
    assert missing_weights("temporal_flickering", s) == []
    assert any("clip_model/ViT-B-32.pt" in m for m in missing_weights("background_consistency", s))
    assert any("hub/checkpoints/dino_vitbase16_pretrain.pth" in m for m in missing_weights("subject_consistency", s))
    (tmp_path / "cache" / "clip_model").mkdir(parents=True)
    (tmp_path / "cache" / "clip_model" / "ViT-B-32.pt").write_bytes(b"x")
    assert missing_weights("background_consistency", s) == []


def test_without_weights_every_weighted_dimension_is_skipped_not_downloaded(tmp_path):
    samples = SampleSet.load(write_sample_set(tmp_path / "s", num=1))
    s = VBenchSettings(python=VBENCH_PYTHON, cache_dir=str(tmp_path / "cache"), torch_home=str(tmp_path / "torch"),
                       dimensions=tuple(d for d in DIMENSIONS if d != "temporal_flickering"))
    out = run_vbench(samples, tmp_path / "work", s)
    assert {r["status"] for r in out.values()} == {"skipped"}
    assert "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth" in out["aesthetic_quality"]["reason"] or \
        "VBench env" in out["aesthetic_quality"]["reason"] or "interpreter" in out["aesthetic_quality"]["reason"]
    assert not (tmp_path / "work").exists()  # nothing was run


@pytest.mark.skipif(_vbench_env_reason() is not None, reason=str(_vbench_env_reason()))
def test_real_vbench_temporal_flickering_runs_and_agrees_with_the_formula(tmp_path):
    still = write_sample_set(tmp_path / "still", num=1)  # ShapeShots stories with moving sprites
    samples = SampleSet.load(still)
    s = VBenchSettings(python=VBENCH_PYTHON, cache_dir=str(tmp_path / "cache"), torch_home=str(tmp_path / "torch"),
                       dimensions=("temporal_flickering",), timeout_s=600)
    out = run_vbench(samples, tmp_path / "work", s)["temporal_flickering"]
    assert out["status"] == "ok", out
    ours = np.mean([temporal_flickering(clip) for clip in samples.video(0)])
    assert out["score"] == pytest.approx(ours, abs=5e-3)  # same formula; clips are re-encoded for VBench
    assert (tmp_path / "work" / "out" / "mocbench_eval_results.json").is_file()
