"""``mocbench bench-model``: a real diffusers transformer, each backend validated then timed, rows into the store.

YAML shape (see configs/models/*.yaml)::

    name: cogvideox_cpu
    model: {architecture: cogvideox_5b.json, num_layers: 2}    # relative to the YAML file's folder
    inputs: {batch: 1, frames: 13, height: 16, width: 24, text_tokens: 226, dtype: float32, device: cpu}
    backends:
      - {name: dense}
      - {name: moc, params: {top_k: 2, chunking: frame, causal: false}}
    timing: {warmup: 1, repeats: 3}

Per config: the transformer is built with random weights (architecture only). Validation runs the
same weights on a shrunken input (``validate.*``): ``dense`` must reproduce the model's own attention
on the whole transformer output, and every backend, at every layer call, its own pattern's float64
masked softmax (``attention_pattern`` + the harness's ``masked_reference``). Then the full forward is
timed for the model's own attention (backend ``diffusers``) and every validated backend, round-robin
(``timing.warmup`` rounds, then ``timing.repeats`` timed rounds, the order rotating each round, so a
machine whose load drifts slows every backend alike); median and IQR per backend. Routing
(``prepare``) and attention (``forward``) time per forward come from the handle (on CUDA from extra,
synchronised forwards). One row per (config, backend) goes into the result store; stats are those of
the plans that ran.
"""

from __future__ import annotations

import functools
import hashlib
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from mocbench.bench.config import DEVICES, DTYPES, BackendEntry, entry_label
from mocbench.bench.env import environment
from mocbench.bench.store import ResultStore
from mocbench.bench.timing import Timing
from mocbench.bench.validate import masked_reference
from mocbench.config import ConfigError, _plain, load_config
from mocbench.integrations.diffusers.attention import stream_layout
from mocbench.integrations.diffusers.handle import apply_backend, use_backend
from mocbench.integrations.diffusers.models import build_transformer, load_architecture, random_inputs
from mocbench.integrations.diffusers.specs import spec_for
from mocbench.registry import get_backend

OWN = "diffusers"  # the backend column of the model's own attention


@dataclass
class ModelConfig:
    """The transformer: an architecture config (JSON) and optional shallower depth."""

    architecture: str = "configs/models/cogvideox_5b.json"  # relative to the YAML file's folder (or absolute)
    num_layers: int | None = None
    num_single_layers: int | None = None  # HunyuanVideo's single-stream layers
    seed: int = 0


@dataclass
class InputConfig:
    """Latent video (after the VAE, before patching), caption and batch (2 = a classifier-free guidance pair)."""

    batch: int = 1
    frames: int = 13
    height: int = 60
    width: int = 90
    text_tokens: int = 226
    text_valid: list[int] | None = None  # real caption tokens per sample (HunyuanVideo, Mochi pad the rest)
    timestep: int = 500
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 1


@dataclass
class ModelValidateConfig:
    """Validation on the same weights at a shrunken latent shape (multiples of the patch sizes)."""

    enabled: bool = True
    frames: int = 2
    height: int = 8
    width: int = 8
    text_tokens: int = 8


@dataclass
class ModelTimingConfig:
    """Round-robin timing: warm-up rounds, timed rounds (median and IQR), a time cap per backend."""

    warmup: int = 1
    repeats: int = 3
    max_seconds: float = 600.0  # per backend; later rounds are dropped once all backends together exceed it


@dataclass
class BenchModelConfig:
    """``mocbench bench-model``: one model, every backend validated and timed, one row each."""

    name: str = "bench_model"
    output: str | None = None  # default runs/<name>/results.csv
    threads: int | None = None  # CPU: torch.set_num_threads for the run
    model: ModelConfig = field(default_factory=ModelConfig)
    inputs: InputConfig = field(default_factory=InputConfig)
    backends: list[BackendEntry] = field(default_factory=lambda: [BackendEntry()])
    timing: ModelTimingConfig = field(default_factory=ModelTimingConfig)
    validate: ModelValidateConfig = field(default_factory=ModelValidateConfig)

    @property
    def output_path(self) -> str:
        return self.output or f"runs/{self.name}/results.csv"


def load_bench_model_config(path: str | None, overrides: list[str] | None = None) -> BenchModelConfig:
    """Schema <- YAML <- overrides; ``model.architecture`` resolved against the YAML's folder; then checked."""
    cfg = load_config(BenchModelConfig, path, overrides)
    arch = Path(cfg.model.architecture)
    if not arch.is_absolute() and path is not None:
        arch = Path(path).parent / arch
    if not arch.is_file():
        raise ConfigError(f"model.architecture: {str(arch)!r} does not exist (a path relative to the config file)")
    cfg.model.architecture = str(arch)
    _check(cfg)
    return cfg


def _check(cfg: BenchModelConfig) -> None:
    i = cfg.inputs
    if i.dtype not in DTYPES:
        raise ConfigError(f"inputs.dtype must be one of {sorted(DTYPES)}, got {i.dtype!r}")
    if i.device.split(":")[0] not in DEVICES:
        raise ConfigError(f"inputs.device must be one of {DEVICES} (optionally cuda:N), got {i.device!r}")
    for key in ("batch", "frames", "height", "width", "text_tokens"):
        if getattr(i, key) < 1:
            raise ConfigError(f"inputs.{key} must be >= 1, got {getattr(i, key)}")
    for key in ("frames", "height", "width", "text_tokens"):
        if getattr(cfg.validate, key) < 1:
            raise ConfigError(f"validate.{key} must be >= 1, got {getattr(cfg.validate, key)}")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"threads must be >= 1 or null, got {cfg.threads}")
    if not cfg.backends:
        raise ConfigError("backends must list at least one backend")
    t = cfg.timing
    if t.warmup < 0 or t.repeats < 1 or not t.max_seconds > 0:
        raise ConfigError(f"timing needs warmup >= 0, repeats >= 1, max_seconds > 0; got warmup={t.warmup}, "
                          f"repeats={t.repeats}, max_seconds={t.max_seconds}")
    for n, b in enumerate(cfg.backends):
        try:
            get_backend(b.name, **_plain(b.params))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"backends.{n}: {exc}") from None
    labels = [entry_label(b) for b in cfg.backends]
    if len(set(labels)) != len(labels) or "diffusers (own attention)" in labels:
        raise ConfigError(f"backends need distinct labels (set `label:`), got {labels}")


def run_bench_model(cfg: BenchModelConfig, *, out: str | None = None, retry_failed: bool = False,
                    log=print) -> list[dict]:
    """Validate and time every backend of ``cfg``; rows are added to the store as they finish."""
    store = ResultStore(out or cfg.output_path)
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, store, retry_failed, log)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: BenchModelConfig, store: ResultStore, retry_failed: bool, log) -> list[dict]:
    arch = load_architecture(cfg.model.architecture)
    depth = {k: v for k in ("num_layers", "num_single_layers") if (v := getattr(cfg.model, k)) is not None}
    dtype, device = DTYPES[cfg.inputs.dtype], cfg.inputs.device
    entries = [(OWN, {}, "diffusers (own attention)")] + [
        (b.name, _plain(b.params), entry_label(b)) for b in cfg.backends]
    settings = {"architecture": arch, "depth": depth, "seed": cfg.model.seed, "inputs": asdict(cfg.inputs),
                "timing": asdict(cfg.timing), "validate": asdict(cfg.validate)}
    keys = {label: _hash({"backend": name, "params": params, **settings}) for name, params, label in entries}
    todo = [e for e in entries[1:] if not store.done(keys[e[2]], retry_failed=retry_failed)]
    if not todo:
        log(f"{cfg.name}: every row is in {store.path} already")
        return []
    todo.insert(0, entries[0])  # the model's own attention is re-timed side by side with whatever runs
    log(f"{cfg.name}: building {arch['_class_name']} ({depth or 'full depth'}) with random weights on {device}")
    model = build_transformer(arch, depth=depth, seed=cfg.model.seed, dtype=dtype, device=device)
    spec = spec_for(model)
    i = cfg.inputs
    inputs = random_inputs(model, batch=i.batch, frames=i.frames, height=i.height, width=i.width,
                           text_tokens=i.text_tokens, text_valid=i.text_valid, timestep=i.timestep, seed=i.seed,
                           dtype=dtype, device=device)
    frames, tokens_per_frame = spec.video_grid(model.config, tuple(inputs["hidden_states"].shape))
    text = 0 if spec.text_placement == "none" else i.text_tokens
    layout = stream_layout(spec.text_placement, 1, frames, tokens_per_frame, text)
    small = _small_inputs(cfg, model) if cfg.validate.enabled else None
    base = {"config_name": cfg.name, "workload": spec.name, "model": arch["_class_name"],
            "architecture": Path(cfg.model.architecture).name, "model_layers": json.dumps(depth or "full"),
            "shots": 1, "frames": frames, "tokens_per_frame": tokens_per_frame, "text_tokens": text,
            "text_placement": spec.text_placement, "tokens": layout.num_tokens, "layout": layout.describe(),
            "batch": i.batch, "dtype": i.dtype, "device": device, "pass": "fwd", **environment(device)}
    runs = []
    for name, params, label in todo:
        row = {"key": keys[label], "backend": name, "label": label, "params": json.dumps(params, sort_keys=True),
               **base}
        runs.append(_Run(row, None if name == OWN else get_backend(name, **params)))
    for run in runs:
        if run.backend is not None:
            run.row.update(family=run.backend.family, impl=run.backend.implementation(device))
            if small is not None:
                log(f"{cfg.name}: validating {run.row['label']} on latent {tuple(small['hidden_states'].shape)}")
                run.attempt(functools.partial(_validate, model, small, run))
                run.check_validation()
    _time_round_robin(model, inputs, [r for r in runs if r.ok], cfg.timing, device,
                      log=lambda m: log(f"{cfg.name}: {m}"))
    for run in runs:
        if run.ok:
            run.attempt(lambda r=run: r.row.update(_result_columns(r, layout, cfg.inputs.batch)))
        store.add(run.row)
    return [r.row for r in runs]


@dataclass
class _Run:
    """One backend's row in the making; the first exception or failed check finishes it as failed."""

    row: dict
    backend: object | None  # None: the model's own attention
    samples_ms: list[float] = field(default_factory=list)
    split: list[dict] = field(default_factory=list)  # per timed forward: prepare_s, forward_s
    stats: object | None = None
    layers: int = 0

    @property
    def ok(self) -> bool:
        return self.row.get("status") != "failed"

    def attempt(self, fn) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 -- a failed row with the error; the other backends still run
            self.row.update(status="failed", reason=f"{type(exc).__name__}: {exc}")

    def check_validation(self) -> None:
        r = self.row
        if not self.ok:
            return
        tol = r["validation_tol"]
        if r["validation_max_err"] > tol:
            r.update(status="failed", reason=f"validation failed: a layer call differs from the backend's own "
                                             f"float64 reference by {r['validation_max_err']:.3g} > {tol:.3g}")
        elif r.get("validation_model_err", 0.0) > tol:
            r.update(status="failed", reason=f"validation failed: the model with {self.row['label']} differs from "
                                             f"its own attention by {r['validation_model_err']:.3g} > {tol:.3g}")


def _time_round_robin(model, inputs, runs: list[_Run], t: ModelTimingConfig, device: str, log) -> None:
    """Full forwards, one backend after another in rotating order, so drifting load hits all alike.

    Each forward applies the backend (or none: the model's own attention), runs, removes it; on CPU the
    same forwards also time routing and attention inside the handle (no synchronisation needed), on CUDA
    that split comes from extra forwards so the timed ones have no per-call synchronisation."""
    forward = _forward(model, inputs)
    cuda = torch.device(device).type == "cuda"

    def once(run: _Run, *, split: bool) -> float:
        handle = None if run.backend is None else apply_backend(model, run.backend, timing=split)
        try:
            _sync(device)
            t0 = time.perf_counter()
            forward()
            _sync(device)
            elapsed = time.perf_counter() - t0
            if handle is not None:
                run.stats, run.layers = handle.stats(), len(handle.per_layer())
                if split:
                    run.split.append(handle.times())
        finally:
            if handle is not None:
                handle.remove()
        return 1e3 * elapsed

    def step(run: _Run, timed: bool) -> None:
        if timed:
            run.samples_ms.append(once(run, split=not cuda))
        else:
            once(run, split=False)

    if not runs:
        return
    log(f"warm-up: {t.warmup} forward(s) per backend, then {t.repeats} round(s) of {len(runs)} timed forwards")
    start = time.perf_counter()
    for r in range(t.warmup + t.repeats):
        timed, first = r >= t.warmup, r % len(runs)
        for run in runs[first:] + runs[:first]:
            if run.ok:
                run.attempt(functools.partial(step, run, timed))
        if timed and r + 1 < t.warmup + t.repeats and \
                time.perf_counter() - start > t.max_seconds * len(runs):
            log(f"stopping after {r + 1 - t.warmup} timed round(s): timing.max_seconds exceeded")
            break
    if cuda:
        for run in runs:
            for _ in range(len(run.samples_ms)):
                if run.ok and run.backend is not None:
                    run.attempt(lambda x=run: once(x, split=True))


def _result_columns(run: _Run, layout, batch: int) -> dict:
    timing = Timing(tuple(run.samples_ms))
    out = {"status": "ok", "model_ms": timing.median_ms, "model_iqr_ms": timing.iqr_ms,
           "repeats": len(run.samples_ms)}
    if run.backend is None:
        return out
    stats = run.stats
    estimate = run.backend.estimate(layout, head_dim=stats.head_dim, batch=batch, heads=stats.heads)
    return {**out, "routing_ms": 1e3 * statistics.median(s["prepare_s"] for s in run.split),
            "attention_ms": 1e3 * statistics.median(s["forward_s"] for s in run.split),
            "attention_layers": run.layers, "heads": stats.heads, "head_dim": stats.head_dim, "pairs": stats.pairs,
            "sparsity": stats.sparsity, "num_chunks": stats.num_chunks, "attention_flops": stats.attention_flops,
            "routing_flops": stats.routing_flops + stats.pooling_flops, "total_flops": stats.total_flops,
            "dense_flops": stats.dense_flops, "est_pairs": estimate.pairs * run.layers,
            "est_sparsity": estimate.sparsity, "est_total_flops": estimate.total_flops * run.layers}


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _forward(model, inputs):
    def call():
        with torch.no_grad():
            return model(**inputs, return_dict=False)[0]
    return call


def _small_inputs(cfg: BenchModelConfig, model) -> dict:
    v, i = cfg.validate, cfg.inputs
    valid = None
    if i.text_valid is not None:  # keep the padding in validation: shrink each real length in proportion
        valid = [max(1, round(n * v.text_tokens / i.text_tokens)) if n else 0 for n in i.text_valid]
    return random_inputs(model, batch=i.batch, frames=v.frames, height=v.height, width=v.width,
                         text_tokens=v.text_tokens, text_valid=valid, timestep=i.timestep, seed=i.seed + 1,
                         dtype=DTYPES[i.dtype], device=i.device)


def _validate(model, small: dict, run: _Run) -> None:
    """Every layer call against its own pattern's float64 masked softmax; ``dense`` also against the model."""
    backend = run.backend
    worst = [0.0]

    def check(layer, q, k, v, plan, out):
        pattern = backend.attention_pattern(q, k, plan.layout)
        ref = masked_reference(q, k, v, pattern, plan.scale)
        worst[0] = max(worst[0], float((out.double() - ref).abs().max()))

    forward = _forward(model, small)
    dtype = small["hidden_states"].dtype
    result = {"validation_tol": backend.tolerance[dtype]}
    if backend.family == "dense":
        own = forward()
        with use_backend(model, backend):
            result["validation_model_err"] = float((forward().double() - own.double()).abs().max())
    with use_backend(model, backend, on_call=check):
        forward()
    result["validation_max_err"] = worst[0]
    run.row.update(result)


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
