"""``mocbench bench-model``: a real diffusers transformer, each backend validated then timed, rows into the store.

Per config (:mod:`.bench_config`): the transformer is built with random weights directly in the target
dtype on the target device (architecture only; :func:`.models.build_transformer`), or loaded from a
local folder (``--weights``, :mod:`.weights`). Then, per backend:

1. **resume**: a row already in the store, measured in this environment, is kept (the store's policy,
   :mod:`mocbench.bench.resume`: ``--retry-failed``, ``--retry-skipped``, ``--reuse-foreign``);
2. **skip**: a backend that cannot run here (device, dtype, head dim, missing package) is a ``skipped``
   row with every reason, as in ``mocbench bench``;
3. **validate** on the same weights at a shrunken input (``validate.*``): every layer call against its
   own pattern's float64 masked softmax (``attention_pattern`` + the harness's ``masked_reference``),
   and a backend that attends every pair there (``dense``, MoC with full coverage) against the model's
   own attention on the whole transformer output; a mismatch is a ``failed`` row;
4. **time** the full forward for the model's own attention (backend ``diffusers``) and every validated
   backend, round-robin (``timing.warmup`` rounds, then ``timing.repeats`` timed rounds, the order
   rotating each round, so drifting machine load hits every backend alike), each forward timed by
   :func:`mocbench.bench.timing.time_call` (CUDA events after an L2 flush on CUDA); median and IQR, and
   the speed-up vs the model's own attention as the median (IQR) of the per-round ratios (``paired_speedup``).
   Routing (``prepare``) and attention (``forward``) time per forward, and the share of each block list
   for full-depth extrapolation (:mod:`.extrapolate`), come from the same forwards on CPU and from extra,
   synchronised forwards on CUDA;
5. **fidelity** (``fidelity: true``): one more, untimed forward with per-layer rel-L2 / cosine against
   the model's dense attention on the same inputs (:mod:`.fidelity`; costs a dense call per layer).

One row per (config, backend) goes into the result store with the environment columns; stats are those
of the plans that ran. ``mocbench report`` shows these rows in its model table.
"""

from __future__ import annotations

import contextlib
import functools
import json
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from mocbench.bench.config import DTYPES, entry_label
from mocbench.bench.env import comparable_environment, environment
from mocbench.bench.resume import ResumePolicy, foreign_notices, needs_run
from mocbench.bench.store import ResultStore
from mocbench.bench.tables import MODEL_REFERENCE
from mocbench.bench.timing import PairedTiming, Timing, time_call
from mocbench.bench.validate import masked_reference
from mocbench.config import plain, stable_hash
from mocbench.errors import ConfigError
from mocbench.integrations.diffusers.attention import stream_layout
from mocbench.integrations.diffusers.bench_config import (  # noqa: F401 -- the config API, re-exported
    OWN_LABEL,
    BenchModelConfig,
    ModelTimingConfig,
    load_bench_model_config,
)
from mocbench.integrations.diffusers.extrapolate import BlockClock, extrapolate, full_depth
from mocbench.integrations.diffusers.fidelity import fidelity_columns
from mocbench.integrations.diffusers.handle import apply_backend, use_backend
from mocbench.integrations.diffusers.models import BLOCK_LISTS, build_transformer, load_architecture, random_inputs
from mocbench.integrations.diffusers.specs import spec_for
from mocbench.integrations.diffusers.weights import load_transformer, transformer_location
from mocbench.layout import TokenLayout
from mocbench.registry import get_backend
from mocbench.stats import sum_stats

OWN = MODEL_REFERENCE  # the backend column of the model's own attention


def run_bench_model(cfg: BenchModelConfig, *, out: str | None = None, policy: ResumePolicy | None = None,
                    log=print) -> list[dict]:
    """Validate and time every backend of ``cfg`` that ``policy`` says needs it; rows are added to the store."""
    store = ResultStore(out or cfg.output_path)
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, store, policy or ResumePolicy(), log)
    finally:
        torch.set_num_threads(threads)


def _architecture(cfg: BenchModelConfig) -> tuple[dict, str]:
    """The architecture dict (the weights' own config with ``--weights``) and the weights' path ("" if random)."""
    arch = load_architecture(cfg.model.architecture)
    if cfg.model.weights is None:
        return arch, ""
    root, sub, name = transformer_location(cfg.model.weights)
    stored = load_architecture((root / sub if sub else root) / "config.json")
    if name != arch["_class_name"]:
        raise ConfigError(f"--weights {str(root)!r} holds a {name}, but model.architecture "
                          f"{Path(cfg.model.architecture).name!r} is a {arch['_class_name']}")
    return stored, str(root.resolve())


def _run(cfg: BenchModelConfig, store: ResultStore, policy: ResumePolicy, log) -> list[dict]:
    arch, weights = _architecture(cfg)
    depth = cfg.depth
    dtype, device = DTYPES[cfg.inputs.dtype], cfg.inputs.device
    entries = [(OWN, {}, OWN_LABEL)] + [(b.name, plain(b.params), entry_label(b)) for b in cfg.backends]
    settings = {"architecture": arch, "depth": depth, "seed": cfg.model.seed, "weights": weights,
                "inputs": asdict(cfg.inputs), "timing": asdict(cfg.timing), "validate": asdict(cfg.validate),
                "fidelity": cfg.fidelity}
    keys = {label: stable_hash({"backend": name, "params": params, **settings}) for name, params, label in entries}
    env = comparable_environment(device)
    for line in foreign_notices(store, [keys[e[2]] for e in entries[1:]], policy, lambda key: env):
        log(f"{cfg.name}: {line}")
    todo = [e for e in entries[1:] if needs_run(store, keys[e[2]], policy, env)]
    if not todo:
        log(f"{cfg.name}: every row is in {store.path} already")
        return []
    todo.insert(0, entries[0])  # the model's own attention is re-timed side by side with whatever runs
    base = {"config_name": cfg.name, "model": arch["_class_name"], "architecture": Path(cfg.model.architecture).name,
            "weights": weights, "model_layers": json.dumps(depth or "full"), "batch": cfg.inputs.batch,
            "dtype": cfg.inputs.dtype, "device": device, "pass": "fwd", **environment(device)}
    runs = [_Run({"key": keys[label], "backend": name, "label": label, "params": json.dumps(params, sort_keys=True),
                  **base}, None if name == OWN else get_backend(name, **params)) for name, params, label in todo]
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        for run in runs:
            run.row.update(status="skipped", reason="CUDA is not available on this machine")
            store.add(run.row)
        log(f"{cfg.name}: skipped: CUDA is not available on this machine")
        return [r.row for r in runs]

    source = f"weights from {weights}" if weights else "random weights"
    log(f"{cfg.name}: {arch['_class_name']} ({depth or 'full depth'}), {source}, {cfg.inputs.dtype} on {device}")
    if weights:
        model = load_transformer(weights, expect_class=arch["_class_name"], depth=depth, dtype=dtype, device=device)
    else:
        model = build_transformer(arch, depth=depth, seed=cfg.model.seed, dtype=dtype, device=device)
    spec = spec_for(model)
    i = cfg.inputs
    inputs = random_inputs(model, batch=i.batch, frames=i.frames, height=i.height, width=i.width,
                           text_tokens=i.text_tokens, text_valid=i.text_valid, timestep=i.timestep, seed=i.seed,
                           dtype=dtype, device=device)
    frames, tokens_per_frame = spec.video_grid(model.config, tuple(inputs["hidden_states"].shape))
    text = 0 if spec.text_placement == "none" else i.text_tokens
    layout = stream_layout(spec.text_placement, 1, frames, tokens_per_frame, text)
    valid = Counter(i.text_valid if text and i.text_valid is not None else [text] * i.batch)
    layouts = [(stream_layout(spec.text_placement, 1, frames, tokens_per_frame, n), count)
               for n, count in valid.items()]  # padded captions run un-padded: one layout per real length
    lists = BLOCK_LISTS.get(spec.name, {})
    full = full_depth(arch, lists)
    measured = {k: depth.get(k, n) for k, n in full.items()}
    head_dim = getattr(model.config, "attention_head_dim", None)
    for run in runs:
        run.row.update(workload=spec.name, shots=1, frames=frames, tokens_per_frame=tokens_per_frame, text_tokens=text,
                       text_placement=spec.text_placement, tokens=layout.num_tokens, layout=layout.describe(),
                       full_depth_layers=sum(full.values()) if full else "")
    small = _small_inputs(cfg, model) if cfg.validate.enabled else None
    for run in runs:
        if run.backend is None:
            continue
        run.row.update(family=run.backend.family, impl=run.backend.implementation(device))
        reasons = run.backend.not_supported_reasons(device=torch.device(device), dtype=dtype, head_dim=head_dim,
                                                    requires_grad=False, layout=layout)
        if reasons:
            run.row.update(status="skipped", reason="; ".join(dict.fromkeys(reasons)))
        elif small is not None:
            log(f"{cfg.name}: validating {run.row['label']} on latent {tuple(small['hidden_states'].shape)}")
            run.attempt(functools.partial(_validate, model, small, run))
            run.check_validation()
    ready = [r for r in runs if r.ok]
    _time_round_robin(model, inputs, ready, cfg.timing, device, lists, extrapolating=measured != full,
                      log=lambda m: log(f"{cfg.name}: {m}"))
    if cfg.fidelity:
        for run in ready:
            if run.ok and run.backend is not None:
                log(f"{cfg.name}: per-layer fidelity of {run.row['label']} (one more forward, not timed)")
                run.attempt(functools.partial(_fidelity, model, inputs, run))
    own = runs[0] if runs[0].ok else None
    for run in runs:
        if run.ok:
            run.attempt(lambda r=run: r.row.update(_result_columns(r, own, layouts, measured, full)))
        store.add(run.row)
    return [r.row for r in runs]


@dataclass
class _Run:
    """One backend's row in the making; the first exception or failed check finishes it as failed."""

    row: dict
    backend: object | None  # None: the model's own attention
    samples_ms: list[float] = field(default_factory=list)
    split: list[dict] = field(default_factory=list)  # per split forward: prepare_s, forward_s
    fractions: list[dict] = field(default_factory=list)  # per split forward: share of each block list
    stats: object | None = None
    layers: int = 0

    @property
    def ok(self) -> bool:
        return self.row.get("status") not in ("failed", "skipped")

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
            r.update(status="failed", reason=f"validation failed: the model with {self.row['label']} (which attends "
                                             f"every pair there) differs from its own attention by "
                                             f"{r['validation_model_err']:.3g} > {tol:.3g}")


def _time_round_robin(model, inputs, runs: list[_Run], t: ModelTimingConfig, device: str, lists: dict[str, str],
                      *, extrapolating: bool, log) -> None:
    """Full forwards, one backend after another in rotating order, so drifting load hits all alike.

    Each forward applies the backend (or none: the model's own attention), runs, removes it. On CPU the
    timed forwards also record routing / attention time inside the handle and the blocks' share of the
    forward (no synchronisation needed); on CUDA those come from extra forwards, so the timed ones have
    no per-call synchronisation."""
    forward = _forward(model, inputs)
    cuda = torch.device(device).type == "cuda"

    def once(run: _Run, *, split: bool) -> float:
        handle = None if run.backend is None else apply_backend(model, run.backend, timing=split)
        clock = BlockClock(model, lists, device) if split else contextlib.nullcontext()
        try:
            with clock:
                ms = time_call(forward, device, warmup=0, repeats=1, l2_flush=t.l2_flush).samples_ms[0]
            if handle is not None:
                run.stats, run.layers = handle.stats(), len(handle.per_layer())
                if split:
                    run.split.append(handle.times())
            if split:
                run.fractions.append({k: s * 1e3 / ms for k, s in clock.seconds.items()})
        finally:
            if handle is not None:
                handle.remove()
        return ms

    def step(run: _Run, timed: bool) -> None:
        if timed:
            run.samples_ms.append(once(run, split=not cuda))
        else:
            once(run, split=False)

    if not runs:
        return
    log(f"warm-up: {t.warmup} forward(s) per backend, then {t.repeats} round(s) of {len(runs)} timed forwards")
    budget = t.max_seconds * len(runs)
    for r in range(t.warmup + t.repeats):
        timed, first = r >= t.warmup, r % len(runs)
        for run in runs[first:] + runs[:first]:
            if run.ok:
                run.attempt(functools.partial(step, run, timed))
        spent = sum(sum(run.samples_ms) for run in runs) / 1e3
        if timed and r + 1 < t.warmup + t.repeats and spent > budget:
            log(f"stopping after {r + 1 - t.warmup} timed round(s): timing.max_seconds exceeded")
            break
    if cuda:
        for run in runs:
            if run.backend is not None or extrapolating:
                for _ in range(len(run.samples_ms)):
                    if run.ok:
                        run.attempt(lambda x=run: once(x, split=True))


def _fidelity(model, inputs, run: _Run) -> None:
    with use_backend(model, run.backend, fidelity=True) as handle:
        _forward(model, inputs)()
    run.row.update(fidelity_columns(handle.fidelity()))


def _result_columns(run: _Run, own: _Run | None, layouts: list[tuple[TokenLayout, int]], measured: dict[str, int],
                    full: dict[str, int]) -> dict:
    """The row's measurements; ``own``: the model's own attention timed in the same rounds (paired speed-up:
    median and IQR of the per-round ratios); ``layouts``: (stream layout, samples) per caption length."""
    timing = Timing(tuple(run.samples_ms))
    out = {"status": "ok", "model_ms": timing.median_ms, "model_iqr_ms": timing.iqr_ms,
           "repeats": len(run.samples_ms)}
    if own is not None and own.samples_ms:
        pair = PairedTiming(Timing(tuple(own.samples_ms)), timing)
        out.update(paired_speedup=pair.ratio_median, paired_speedup_iqr=pair.ratio_iqr)
    extrapolated, why = extrapolate(timing.median_ms, run.fractions, measured, full)
    out.update(extrapolated_model_ms=extrapolated, extrapolation_note=why)
    if run.backend is None:
        return out
    stats = run.stats
    estimate = sum_stats([run.backend.estimate(layout, head_dim=stats.head_dim, batch=n, heads=stats.heads)
                          for layout, n in layouts])
    routing_ms = 1e3 * statistics.median(s["prepare_s"] for s in run.split)
    attention_ms = 1e3 * statistics.median(s["forward_s"] for s in run.split)
    out.update(routing_ms=routing_ms, attention_ms=attention_ms)
    if extrapolated is not None:
        scale = sum(full.values()) / run.layers  # one stream attention layer per block, all of one shape
        out.update(extrapolated_routing_ms=routing_ms * scale, extrapolated_attention_ms=attention_ms * scale)
    return {**out, "attention_layers": run.layers, "heads": stats.heads, "head_dim": stats.head_dim,
            "pairs": stats.pairs, "sparsity": stats.sparsity, "num_chunks": stats.num_chunks,
            "attention_flops": stats.attention_flops, "routing_flops": stats.routing_flops + stats.pooling_flops,
            "total_flops": stats.total_flops, "dense_flops": stats.dense_flops,
            "est_pairs": estimate.pairs * run.layers, "est_sparsity": estimate.sparsity,
            "est_total_flops": estimate.total_flops * run.layers}


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
    """Every layer call against its own pattern's float64 masked softmax; a backend that attends every pair
    on this input (``dense``, MoC with full coverage) also against the model's own attention, whole output."""
    backend = run.backend
    worst = [0.0]

    def check(layer, q, k, v, plan, out):
        pattern = backend.attention_pattern(q, k, plan.layout)
        ref = masked_reference(q, k, v, pattern, plan.scale)
        worst[0] = max(worst[0], float((out.double() - ref).abs().max()))

    forward = _forward(model, small)
    dtype = small["hidden_states"].dtype
    with use_backend(model, backend, on_call=check) as handle:
        got = forward()
    result = {"validation_tol": backend.tolerance[dtype], "validation_max_err": worst[0]}
    if backend.family == "dense" or handle.stats().sparsity == 0:
        result["validation_model_err"] = float((got.double() - forward().double()).abs().max())
    run.row.update(result)



