"""Run a benchmark sweep: for every cell, skip-or-validate-then-time, and write one row.

Order per cell: (1) already in the store, measured in this environment -> nothing (see
:mod:`mocbench.bench.resume`); (2) unsupported here (missing package,
device, dtype, head_dim, no backward, no CUDA), or its estimated memory over the budget
(:mod:`mocbench.bench.memory`, before anything is allocated) -> a ``skipped`` row with every reason;
(3) validation against the float64 masked reference on a shrunken layout -> a ``failed`` row
on mismatch; (4) measured and analytic accounting, then timing of ``prepare`` (routing),
``forward`` (attention; plus backward for ``fwd+bwd``) and the two together (``total``).
An exception inside a cell (e.g. out of memory) makes a ``failed`` row naming it; the sweep goes on.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Callable
from contextlib import nullcontext

import torch

from mocbench.backend import AttentionBackend
from mocbench.bench.config import BenchConfig, Cell, config_hash, expand_cells, reference_entry
from mocbench.bench.env import comparable_environment, environment
from mocbench.bench.memory import GIB, cell_memory_bytes, memory_check
from mocbench.bench.resume import ResumePolicy, foreign_notices, needs_run
from mocbench.bench.store import ResultStore
from mocbench.bench.timing import peak_memory_mb, time_call, time_pair
from mocbench.bench.validate import small_layout, validate_backend
from mocbench.blocks import DEFAULT_BLOCK_SHAPE
from mocbench.config import plain
from mocbench.registry import get_backend


def run_bench(cfg: BenchConfig, *, output: str | None = None, policy: ResumePolicy | None = None,
              progress: bool = True, on_cell_done: Callable[[Cell, dict], None] | None = None,
              log: Callable[[str], None] = print) -> ResultStore:
    """Measure every cell of ``cfg`` that ``policy`` says needs it, into the store at ``output``
    (default ``cfg.output_path``). Other processes may write the same store at the same time: each
    cell is re-checked against the store just before it is measured, so none is measured twice."""
    policy = policy or ResumePolicy()
    cells = expand_cells(cfg)
    store = ResultStore(output or cfg.output_path)
    chash = config_hash(cfg)
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        envs = {dev: comparable_environment(dev) for dev in {c.device for c in cells}}
        env_of = {c.key: envs[c.device] for c in cells}
        for line in foreign_notices(store, [c.key for c in cells], policy, env_of.__getitem__):
            log(line)
        todo = [c for c in cells if needs_run(store, c.key, policy, env_of[c.key])]
        with _progress(progress) or nullcontext() as bar:
            task = bar.add_task("bench", total=len(cells), completed=len(cells) - len(todo)) if bar else None
            for cell in todo:
                store.refresh()  # another writer may have finished this cell meanwhile
                if needs_run(store, cell.key, policy, env_of[cell.key]):
                    if bar:
                        bar.update(task, description=f"{cell.label} | {cell.workload} shots={cell.geometry.shots} "
                                                     f"frames={cell.geometry.frames} {cell.pass_}")
                    row = measure_cell(cell, cfg)
                    row["config_hash"], row["config_name"] = chash, cfg.name
                    store.add(row)
                    if on_cell_done is not None:
                        on_cell_done(cell, row)
                if bar:
                    bar.advance(task)
    finally:
        torch.set_num_threads(threads)
    return store


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), transient=False)


def cell_row(cell: Cell, backend: AttentionBackend | None) -> dict:
    """The descriptive columns of a cell's row (no measurements)."""
    layout, g = cell.layout(), cell.geometry
    row = {
        "key": cell.key, "backend": cell.backend, "label": cell.label,
        "family": backend.family if backend is not None else "",
        "params": json.dumps(cell.params, sort_keys=True), "workload": cell.workload, "shots": g.shots,
        "frames": g.frames, "tokens_per_frame": g.tokens_per_frame, "text_tokens": g.text_tokens,
        "text_placement": g.text_placement, "tokens": layout.num_tokens, "layout": layout.describe(),
        "batch": cell.batch, "heads": cell.heads, "head_dim": cell.head_dim, "dtype": cell.dtype,
        "device": cell.device, "pass": cell.pass_,
        "impl": backend.implementation(cell.device) if backend is not None else "",
    }
    row.update(environment(cell.device))
    return row


def skip_reasons(backend: AttentionBackend, cell: Cell) -> list[str]:
    reasons = []
    device = torch.device(cell.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        reasons.append("CUDA is not available on this machine")
    for r in backend.not_supported_reasons(device=device, dtype=cell.torch_dtype, head_dim=cell.head_dim,
                                           requires_grad=cell.pass_ == "fwd+bwd", layout=cell.layout()):
        if r not in reasons:
            reasons.append(r)
    return reasons


def measure_cell(cell: Cell, cfg: BenchConfig) -> dict:
    """One finished row for ``cell``: ok (with timings), skipped (with reasons) or failed (with the error)."""
    backend = get_backend(cell.backend, **cell.params)
    row = cell_row(cell, backend)
    reasons = skip_reasons(backend, cell)
    try:
        need = cell_memory_bytes(backend, cell, cfg)  # from sizes alone: nothing is allocated for the cell yet
    except Exception as exc:  # noqa: BLE001 -- a cell that cannot run here keeps its skip reasons
        return _finish(row, "skipped", "; ".join(reasons)) if reasons else _finish(row, "failed", _error_text(exc))
    row["est_mem_gib"] = round(need / GIB, 4)
    if not reasons:
        over = memory_check(need, cell.device, cfg.max_memory_gib).reason
        reasons = [over] if over else []
    if reasons:
        return _finish(row, "skipped", "; ".join(reasons))
    try:
        if cfg.validate.enabled:
            v = cfg.validate
            small = small_layout(cell.geometry, max_frames=v.max_frames, max_tokens_per_frame=v.max_tokens_per_frame,
                                 max_text_tokens=v.max_text_tokens)
            check = validate_backend(backend, small, head_dim=cell.head_dim, dtype=cell.torch_dtype,
                                     device=cell.device, heads=v.heads, seed=v.seed, grads=cell.pass_ == "fwd+bwd")
            row.update(validation_max_err=check.max_abs_err, validation_tol=check.tolerance)
            if check.grad_max_abs_err is not None:
                row.update(validation_grad_max_err=check.grad_max_abs_err, validation_grad_tol=check.grad_tolerance)
            if not check.ok:
                return _finish(row, "failed", check.message(cell.label, cell.dtype))
        row.update(_measure(backend, cell, cfg))
    except Exception as exc:  # noqa: BLE001 -- recorded as a failed row, with the error, never a silent NaN
        _release(cell.device)
        return _finish(row, "failed", _error_text(exc))
    return _finish(row, "ok", "")


def _error_text(exc: Exception) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {first}"


def _paired_reference(cfg: BenchConfig, cell: Cell) -> AttentionBackend | None:
    """The reference backend to time side by side with ``cell`` (None: not asked for, or the cell is it)."""
    entry = reference_entry(cfg) if cfg.timing.paired_reference else None
    if entry is None or cell.label == cfg.reference:
        return None
    return get_backend(entry.name, **plain(entry.params))


def _finish(row: dict, status: str, reason: str) -> dict:
    row.update(status=status, reason=reason, finished_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    return row


def _release(device: str) -> None:
    if torch.device(device).type == "cuda" and torch.cuda.is_available():  # pragma: no cover (GPU)
        torch.cuda.empty_cache()


def _measure(backend: AttentionBackend, cell: Cell, cfg: BenchConfig) -> dict:
    layout = cell.layout()
    device = torch.device(cell.device)
    gen = torch.Generator().manual_seed(cfg.seed)
    shape = (cell.batch, cell.heads, layout.num_tokens, cell.head_dim)
    q, k, v = (torch.randn(shape, generator=gen).to(device=device, dtype=cell.torch_dtype) for _ in range(3))

    # block density (moc-spec §10) on the 128 x 128 grid of flash-style kernels; analytic None: depends on routing
    stats = backend.stats(q, k, layout, block_shape=DEFAULT_BLOCK_SHAPE)
    est = backend.estimate(layout, head_dim=cell.head_dim, batch=cell.batch, heads=cell.heads,
                           block_shape=DEFAULT_BLOCK_SHAPE)
    backward = cell.pass_ == "fwd+bwd"
    timed_flops = stats.total_flops + (stats.backward_attention_flops if backward else 0)
    out = {
        "pairs": stats.pairs, "sparsity": stats.sparsity, "block_density": stats.block_density,
        "num_chunks": stats.num_chunks,
        "attention_flops": stats.attention_flops, "routing_flops": stats.routing_flops,
        "pooling_flops": stats.pooling_flops,
        "total_flops": stats.total_flops, "dense_flops": stats.dense_flops,
        "est_pairs": est.pairs, "est_sparsity": est.sparsity, "est_block_density": est.block_density,
        "est_attention_flops": est.attention_flops,
        "est_total_flops": est.total_flops, "timed_flops": timed_flops,
    }

    if backward:
        for t in (q, k, v):
            t.requires_grad_(True)
        grad_out = torch.randn(shape, generator=gen).to(device=device, dtype=cell.torch_dtype)
    grad_ctx = nullcontext if backward else torch.no_grad

    def attend_with(b: AttentionBackend):
        def attend(plan):
            o = b.forward(q, k, v, plan)
            if backward:
                o.backward(grad_out)
                q.grad = k.grad = v.grad = None
            return o
        return attend

    attend = attend_with(backend)
    t = cfg.timing
    opts = {"warmup": t.warmup, "repeats": t.repeats, "min_repeat_ms": t.min_repeat_ms, "max_inner": t.max_inner,
            "l2_flush": t.l2_flush, "max_seconds": t.max_seconds_per_cell}
    reference = _paired_reference(cfg, cell)
    with grad_ctx():
        prepare = time_call(lambda: backend.prepare(q, k, layout), device, **opts)
        plan = backend.prepare(q, k, layout)
        forward = time_call(lambda: attend(plan), device, **opts)
        plan = None  # one plan alive at a time: the memory estimate counts one
        if reference is None:
            total = time_call(lambda: attend(backend.prepare(q, k, layout)), device, **opts)
        else:
            attend_ref = attend_with(reference)
            pair = time_pair(lambda: attend_ref(reference.prepare(q, k, layout)),
                             lambda: attend(backend.prepare(q, k, layout)), device, **opts)
            total = pair.subject
            out.update(paired_reference_ms=pair.reference.median_ms, paired_reference_iqr_ms=pair.reference.iqr_ms,
                       paired_speedup=pair.ratio_median, paired_speedup_iqr=pair.ratio_iqr)
        mem, mem_method = peak_memory_mb(lambda: attend(backend.prepare(q, k, layout)), device)
    _release(cell.device)
    out.update(
        prepare_ms=prepare.median_ms, prepare_iqr_ms=prepare.iqr_ms, forward_ms=forward.median_ms,
        forward_iqr_ms=forward.iqr_ms, total_ms=total.median_ms, total_iqr_ms=total.iqr_ms,
        repeats=len(total.samples_ms), inner=total.inner, peak_mem_mb=mem, mem_method=mem_method,
        tflops=timed_flops / (total.median_ms * 1e-3) / 1e12 if total.median_ms > 0 else math.nan,
    )
    return out
