"""The real VBench (``vbench`` 0.1.5), run in its own virtualenv through a subprocess.

vbench pins ``numpy<2``, ``transformers==4.33.2`` and more, which clash with this package's stack,
so it lives in a separate interpreter (``make vbench-env`` builds ``.venv-vbench``) and we talk to
it through files: each shot of each sample is written as one clip (``custom_input`` mode, one mp4
per clip), :mod:`mocbench.eval.vbench_worker` runs ``VBench.evaluate(..., local=True)`` there,
and we read VBench's ``{name}_eval_results.json`` back.

Weights are never downloaded: before the run every requested dimension is checked for its files
in the ``VBENCH_CACHE_DIR`` layout (DINO also needs its checkpoint in the torch hub cache,
``$TORCH_HOME/hub/checkpoints``); a dimension with a missing file is reported as skipped, naming
the file, and is not passed to VBench (whose ``local`` mode would otherwise try ``wget``).
Temporal flickering needs no weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mocbench.eval.samples import SampleSet

# The six dimensions of the paper tables plus temporal flickering.
DIMENSIONS = ("subject_consistency", "background_consistency", "motion_smoothness", "dynamic_degree",
              "aesthetic_quality", "imaging_quality", "temporal_flickering")

# Files each dimension loads, relative to VBENCH_CACHE_DIR ("torch_hub:" = $TORCH_HOME/hub/checkpoints).
WEIGHTS = {
    "subject_consistency": ("dino_model/facebookresearch_dino_main/hubconf.py", "dino_model/dino_vitbase16_pretrain.pth",
                            "torch_hub:dino_vitbase16_pretrain.pth"),
    "background_consistency": ("clip_model/ViT-B-32.pt",),
    "motion_smoothness": ("amt_model/amt-s.pth",),
    "dynamic_degree": ("raft_model/models/raft-things.pth",),
    "aesthetic_quality": ("clip_model/ViT-L-14.pt", "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth"),
    "imaging_quality": ("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",),
    "temporal_flickering": (),
}


def _default_python() -> str:
    return os.environ.get("MOCBENCH_VBENCH_PYTHON", ".venv-vbench/bin/python")


def _default_cache() -> str:
    return os.environ.get("VBENCH_CACHE_DIR", str(Path.home() / ".cache" / "vbench"))


def _default_torch_home() -> str:
    return os.environ.get("TORCH_HOME", str(Path.home() / ".cache" / "torch"))


@dataclass
class VBenchSettings:
    """Where the VBench interpreter and weights are; every field can be set from the CLI / configs."""

    python: str = field(default_factory=_default_python)
    cache_dir: str = field(default_factory=_default_cache)
    torch_home: str = field(default_factory=_default_torch_home)
    device: str = "cpu"
    dimensions: tuple[str, ...] = DIMENSIONS
    timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        bad = [d for d in self.dimensions if d not in WEIGHTS]
        if bad:
            raise ValueError(f"unknown VBench dimension(s) {bad}; known: {list(WEIGHTS)}")


def missing_weights(dimension: str, s: VBenchSettings) -> list[str]:
    """The files ``dimension`` needs that are not there, as ``$VBENCH_CACHE_DIR/...`` / ``$TORCH_HOME/...``."""
    out = []
    for rel in WEIGHTS[dimension]:
        if rel.startswith("torch_hub:"):
            name = "hub/checkpoints/" + rel.split(":", 1)[1]
            if not (Path(s.torch_home) / name).is_file():
                out.append(f"$TORCH_HOME/{name} (TORCH_HOME={s.torch_home})")
        elif not (Path(s.cache_dir) / rel).is_file():
            out.append(f"$VBENCH_CACHE_DIR/{rel} (VBENCH_CACHE_DIR={s.cache_dir})")
    return out


def env_problem(s: VBenchSettings) -> str | None:
    """Why the VBench interpreter cannot run, or None."""
    if not Path(s.python).is_file():
        return f"VBench interpreter {s.python!r} not found (build it with `make vbench-env`)"
    probe = subprocess.run([s.python, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('vbench') is None)"],
                           capture_output=True, text=True, timeout=120, check=False)
    if probe.returncode:
        return f"package 'vbench' is not installed in {s.python!r} (run `make vbench-env`)"
    return None


def write_clips(samples: SampleSet, clip_dir: Path) -> list[Path]:
    """One mp4 per (sample, shot) at the stored resolution, near-lossless (VBench reads them with cv2)."""
    import imageio.v2 as imageio

    clip_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(len(samples)):
        for k, shot in enumerate(samples.video(i)):
            path = clip_dir / f"sample{i:03d}_shot{k}.mp4"
            imageio.mimwrite(str(path), list(shot), fps=4, codec="libx264", quality=10, macro_block_size=1,
                             ffmpeg_log_level="error")
            out.append(path)
    return out


def run_vbench(samples: SampleSet, work_dir: str | Path, settings: VBenchSettings) -> dict[str, dict]:
    """``{dimension: {"status": "ok", "score": x} | {"status": "skipped"|"failed", "reason": ...}}``."""
    results: dict[str, dict] = {}
    problem = env_problem(settings)
    runnable = []
    for dim in settings.dimensions:
        missing = missing_weights(dim, settings)
        if problem:
            results[dim] = {"status": "skipped", "reason": problem}
        elif missing:
            results[dim] = {"status": "skipped", "reason": "missing VBench weights: " + ", ".join(missing)}
        else:
            runnable.append(dim)
    if not runnable:
        return results
    work = Path(work_dir).resolve()
    clips = write_clips(samples, work / "clips")
    name = "mocbench"
    request = {"videos": str(work / "clips"), "output": str(work / "out"), "name": name, "dimensions": runnable,
               "device": settings.device}
    (work / "request.json").write_text(json.dumps(request, indent=2))
    worker = Path(__file__).with_name("vbench_worker.py")
    env = {**os.environ, "VBENCH_CACHE_DIR": str(Path(settings.cache_dir).resolve()),
           "TORCH_HOME": str(Path(settings.torch_home).resolve())}
    try:
        proc = subprocess.run([settings.python, str(worker), str(work / "request.json")], capture_output=True,
                              text=True, timeout=settings.timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        for dim in runnable:
            results[dim] = {"status": "failed", "reason": f"VBench timed out after {settings.timeout_s:g} s"}
        return results
    (work / "vbench.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    result_file = work / "out" / f"{name}_eval_results.json"
    if proc.returncode or not result_file.is_file():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        for dim in runnable:
            results[dim] = {"status": "failed", "reason": f"VBench exited {proc.returncode}: {tail} "
                                                          f"(log: {work / 'vbench.log'})"}
        return results
    data = json.loads(result_file.read_text())
    for dim in runnable:
        if dim not in data:
            results[dim] = {"status": "failed", "reason": f"{result_file} has no {dim!r} entry"}
            continue
        score, per_video = data[dim][0], data[dim][1]
        results[dim] = {"status": "ok", "score": float(score), "clips": len(per_video) if isinstance(per_video, list)
                        else len(clips)}
    return results


def vbench_python_version(s: VBenchSettings) -> str:
    """``vbench x, torch y`` of the VBench interpreter (for the environment footnote)."""
    code = ("import importlib.metadata as m; print('vbench', m.version('vbench'), 'torch', m.version('torch'), "
            "'numpy', m.version('numpy'))")
    try:
        out = subprocess.run([s.python, "-c", code], capture_output=True, text=True, timeout=60, check=False)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


if __name__ == "__main__":  # pragma: no cover - manual check: python -m mocbench.eval.vbench_real SAMPLES
    print(json.dumps(run_vbench(SampleSet.load(sys.argv[1]), sys.argv[2], VBenchSettings()), indent=2))
