"""``mocbench sample-model``: a diffusers pipeline from local weights, sampled with a chosen backend.

The pipeline folder (``--weights``, :mod:`.weights`) is loaded offline; the backend goes into every
transformer of the pipeline that has a model spec (Wan2.2's ``transformer_2`` too) for the whole call;
sample ``i`` uses prompt ``prompts[i % len(prompts)]`` and a generator seeded ``seed + i`` on the
pipeline's device, so two backends sampled with the same config see the same prompts and noise.

Written into ``--out`` in the layout ``mocbench eval`` reads (:mod:`mocbench.eval.samples`):
``sample_XXX.mp4`` (one clip, at the pipeline's resolution, scale 1) and ``metadata.json`` with
``backend``, ``backend_params``, ``seed``, ``num``, ``steps``, ``sampler`` (the scheduler class), the
weights folder, the attention stats of the plans that ran, and per sample its ``noise_seed``,
``captions`` and the clip's geometry. That reader takes the geometry from a ShapeShots story config
(``ground_truth.config``); a pipeline has no ground truth, so only ``{shots: 1, frames, height, width}``
is written there, and ``checkpoint`` stays empty (so ``val_loss`` and ``cost``, which need a mocbench
checkpoint, are skipped with that reason). ``fidelity`` then compares two backends' samples
(PSNR / SSIM vs the ``dense`` samples) and the VBench evaluators score them.
"""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mocbench.bench.config import DEVICES, DTYPES
from mocbench.config import BackendConfig, ConfigError, load_config, plain
from mocbench.errors import check_output_dir, path_error
from mocbench.integrations.diffusers.handle import apply_backend
from mocbench.integrations.diffusers.specs import list_models, spec_for
from mocbench.integrations.diffusers.weights import load_pipeline
from mocbench.registry import get_backend
from mocbench.stats import sum_stats
from mocbench.tasks.media import write_mp4


@dataclass
class SampleModelConfig:
    """What to sample: prompts, video size, sampler steps, guidance, dtype/device, and the backend."""

    name: str = "sample_model"
    prompts: list[str] = field(default_factory=lambda: ["a red fox runs through deep snow"])
    negative_prompt: str | None = None
    num: int | None = None  # samples; default one per prompt
    seed: int = 0  # sample i: generator seeded seed + i
    num_frames: int = 49
    height: int = 480
    width: int = 720
    steps: int = 50
    guidance_scale: float = 6.0
    fps: int = 8
    dtype: str = "bfloat16"
    device: str = "cuda"
    shots: int = 1  # cut the latent frames into this many shots for the backend's layout
    backend: BackendConfig = field(default_factory=BackendConfig)
    pipeline_kwargs: dict = field(default_factory=dict)  # any other argument of the pipeline's __call__

    @property
    def count(self) -> int:
        return len(self.prompts) if self.num is None else self.num


def load_sample_model_config(path: str | None, overrides: list[str] | None = None) -> SampleModelConfig:
    """Schema <- YAML <- overrides, then every value checked (errors name the key and what is accepted)."""
    cfg = load_config(SampleModelConfig, path, overrides)
    if not cfg.prompts or not all(isinstance(p, str) and p.strip() for p in cfg.prompts):
        raise ConfigError(f"prompts must be a non-empty list of non-empty strings, got {cfg.prompts!r}")
    for key in ("num_frames", "height", "width", "steps", "fps", "shots"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.num is not None and cfg.num < 1:
        raise ConfigError(f"num must be >= 1 or null (one sample per prompt), got {cfg.num}")
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {cfg.dtype!r}")
    if cfg.device.split(":")[0] not in DEVICES:
        raise ConfigError(f"device must be one of {DEVICES} (optionally cuda:N), got {cfg.device!r}")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device!r} but CUDA is not available on this machine (device=cpu samples on "
                          f"the CPU)")
    try:
        get_backend(cfg.backend.name, **plain(cfg.backend.params))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"backend: {exc}") from None
    return cfg


def sample_model(cfg: SampleModelConfig, weights: str | Path, out: str | Path, *, log=print) -> list[np.ndarray]:
    """Sample ``cfg`` from the pipeline in ``weights`` into ``out``; returns the float videos ``(F, H, W, 3)``
    in [0, 1] as the pipeline made them (before mp4 encoding)."""
    out = check_output_dir(out, "--out")
    pipe = load_pipeline(weights, dtype=DTYPES[cfg.dtype], device=cfg.device)
    call_kwargs = _call_kwargs(cfg, pipe)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise path_error(exc, "--out") from None
    transformers = {}
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            try:
                spec_for(component)
            except ValueError:
                continue
            transformers[name] = component
    if not transformers:
        known = ", ".join(spec.name for spec in list_models())
        raise ConfigError(f"--weights {str(weights)!r}: {type(pipe).__name__} has no transformer with a mocbench model "
                          f"spec (registered: {known}; others: mocbench.integrations.diffusers.register_model)")
    params = plain(cfg.backend.params)
    backend = get_backend(cfg.backend.name, **params)
    layouts: list[str] = []

    def first_layout(layer, q, k, v, plan, o):
        if not layouts:
            layouts.append(plan.layout.describe())

    handles, videos, samples = [], [], []
    try:
        for transformer in transformers.values():
            handles.append(apply_backend(transformer, backend, shots=cfg.shots, on_call=first_layout))
        for i in range(cfg.count):
            prompt = cfg.prompts[i % len(cfg.prompts)]
            generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed + i)
            t0 = time.perf_counter()
            frames = pipe(prompt=prompt, generator=generator, **call_kwargs).frames
            seconds = time.perf_counter() - t0
            video = np.asarray(frames[0], dtype=np.float32)  # (F, H, W, 3) in [0, 1]
            videos.append(video)
            clip = torch.from_numpy(video).permute(0, 3, 1, 2)[None] * 2 - 1  # (S=1, F, 3, H, W) in [-1, 1]
            mp4 = write_mp4(out / f"sample_{i:03d}.mp4", clip, fps=cfg.fps, scale=1)
            F, H, W, _ = video.shape
            samples.append({"index": i, "noise_seed": cfg.seed + i, "captions": [prompt], "mp4": mp4.name,
                            "seconds": round(seconds, 3),
                            "ground_truth": {"config": {"shots": 1, "frames": F, "height": H, "width": W}}})
            log(f"{cfg.name}: sample {i} ({F} frames, {W}x{H}) in {seconds:.1f} s: {mp4}")
    finally:
        for handle in handles:
            handle.remove()
    stats = sum_stats([s for h in handles for s in h.per_layer().values()])
    meta = {"backend": cfg.backend.name, "backend_params": params, "label": backend.label, "seed": cfg.seed,
            "num": cfg.count, "steps": cfg.steps, "sampler": type(pipe.scheduler).__name__,
            "guidance": cfg.guidance_scale, "checkpoint": "", "weights": str(Path(weights).resolve()),
            "pipeline": type(pipe).__name__, "transformers": {n: type(t).__name__ for n, t in transformers.items()},
            "dtype": cfg.dtype, "device": cfg.device, "shots": cfg.shots, "fps": cfg.fps,
            "layout": layouts[0] if layouts else "", "sparsity": stats.sparsity, "attention_pairs": stats.pairs,
            "attention_flops": stats.total_flops, "dense_flops": stats.dense_flops,
            "about": "mocbench sample-model: a diffusers pipeline's output, no ground truth; ground_truth.config "
                     "only gives the clip geometry that mocbench eval reads",
            "samples": samples}
    try:
        (out / "metadata.json").write_text(json.dumps(meta, indent=2))
    except OSError as exc:
        raise path_error(exc, "--out") from None
    return videos


def _call_kwargs(cfg: SampleModelConfig, pipe) -> dict:
    """The pipeline call's keyword arguments; a name its ``__call__`` does not take is an error naming it."""
    kwargs = {"height": cfg.height, "width": cfg.width, "num_frames": cfg.num_frames,
              "num_inference_steps": cfg.steps, "guidance_scale": cfg.guidance_scale, "output_type": "np",
              **({"negative_prompt": cfg.negative_prompt} if cfg.negative_prompt is not None else {}),
              **plain(cfg.pipeline_kwargs)}
    accepted = [n for n in inspect.signature(pipe.__call__).parameters if n != "self"]
    for reserved in ("prompt", "generator", "output_type"):
        if reserved in plain(cfg.pipeline_kwargs):
            raise ConfigError(f"pipeline_kwargs.{reserved} is set by sample-model itself (prompts, seed, frames as "
                              f"arrays); remove it")
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise ConfigError(f"{type(pipe).__name__} takes no argument {unknown[0]!r} (config key or pipeline_kwargs); "
                          f"it takes: {', '.join(accepted)}")
    return kwargs
