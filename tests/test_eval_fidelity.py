"""Fidelity to dense (PSNR / SSIM) and the checks on sample folders: known answers and clear errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from eval_fakes import write_sample_set

from mocbench.eval.fidelity import fidelity, video_psnr_ssim
from mocbench.eval.samples import SampleSet


def test_identical_videos_give_psnr_inf_and_ssim_1(tmp_path):
    v = np.random.default_rng(0).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
    psnr, ssim = video_psnr_ssim(v, v.copy())
    assert psnr == math.inf and ssim == pytest.approx(1.0, abs=1e-9)
    a = SampleSet.load(write_sample_set(tmp_path / "a"))
    b = SampleSet.load(write_sample_set(tmp_path / "b", backend="moc", params={"top_k": 1}))
    out = fidelity(b, a)
    assert out["psnr"] == math.inf and out["ssim"] == pytest.approx(1.0, abs=1e-9)


def test_psnr_matches_the_mse_formula_and_noise_lowers_both():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (1, 3, 24, 24, 3)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    c = np.clip(a.astype(int) + rng.integers(-60, 61, a.shape), 0, 255).astype(np.uint8)
    mse = np.mean(((a.astype(float) - b) / 255) ** 2)
    psnr_b, ssim_b = video_psnr_ssim(a, b)
    psnr_c, ssim_c = video_psnr_ssim(a, c)
    assert psnr_b == pytest.approx(10 * math.log10(1 / mse), rel=1e-6)
    assert psnr_c < psnr_b and ssim_c < ssim_b < 1


def test_decoded_frames_have_the_stored_geometry(tmp_path):
    s = SampleSet.load(write_sample_set(tmp_path / "a"))
    assert s.video(0).shape == (3, 4, 64, 64, 3) and s.scale == 4
    assert s.native(0).shape == (3, 4, 3, 16, 16)


@pytest.mark.parametrize("field,value,message", [
    ("seed", 5, "seed"), ("num", 1, "num"), ("captions", None, "captions")])
def test_mismatched_sample_sets_are_refused_naming_the_difference(tmp_path, field, value, message):
    a = SampleSet.load(write_sample_set(tmp_path / "a"))
    if field == "seed":
        b_dir = write_sample_set(tmp_path / "b", seed=value)
    elif field == "num":
        b_dir = write_sample_set(tmp_path / "b", num=value)
    else:
        b_dir = write_sample_set(tmp_path / "b")
        meta = json.loads((b_dir / "metadata.json").read_text())
        meta["samples"][1]["captions"] = ["shot 0 : something else"] * 3
        (b_dir / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=message):
        fidelity(SampleSet.load(b_dir), a)


def test_missing_folder_missing_metadata_and_unreadable_video_name_the_path(tmp_path):
    with pytest.raises(ValueError, match="nowhere.*does not exist"):
        SampleSet.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="metadata.json.*is missing"):
        SampleSet.load(tmp_path / "empty")
    d = write_sample_set(tmp_path / "bad")
    (d / "sample_001.mp4").write_bytes(b"this is not an mp4")
    with pytest.raises(ValueError, match="cannot read video .*sample_001.mp4"):
        SampleSet.load(d).videos()
    (d / "sample_001.mp4").unlink()
    with pytest.raises(ValueError, match="sample_001.mp4.*does not exist"):
        SampleSet.load(d).videos()
