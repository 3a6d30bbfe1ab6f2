"""Memory checked first: a bench cell's estimated peak bounds what it really uses, a cell over the
budget is recorded ``skipped`` without allocating its inputs, and a bad ``--max-memory`` is one line.

The upper-bound tests run each cell in a fresh child process (``tests/memprobe.py``) and compare the
estimate with the growth of the child's resident-set high-water mark over the cell (torch's CPU
allocations are invisible to ``tracemalloc``; the kernel's ``VmHWM`` sees them). What that measures
and misses is said in memprobe's docstring; ``SLACK`` absorbs allocator and thread-pool noise that the
warm-up cannot pre-pay. The cells are sized so that the terms under test (scores, masks, routing
tables) are hundreds of MB, well above the noise and the estimate's fixed kernel allowance.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mocbench
from mocbench import TokenLayout
from mocbench.bench.config import (
    BackendEntry,
    BenchConfig,
    TimingConfig,
    WorkloadConfig,
    expand_cells,
    load_bench_config,
)
from mocbench.bench.memory import GIB, available_bytes, cell_memory_bytes
from mocbench.bench.runner import measure_cell
from mocbench.cli import main
from mocbench.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).with_name("memprobe.py")
MIB = 1 << 20
SLACK = 16 * MIB  # allocator arenas and lazily started threads the warm-up cell does not pre-pay
# L = 4 x (16 + 4 x 256) = 4160 tokens: q, k, v 4.3 MB each; (B, H, L, L) float32 scores 277 MB
WORKLOAD = dict(shots=[4], frames=[4], tokens_per_frame=256, text_tokens=16, batch=1, heads=4, head_dim=64,
                dtype="float32")
LINUX_PROBE = os.path.exists("/proc/self/clear_refs") and sys.platform.startswith("linux")


def _probe(backend: str, params: dict, pass_: str, **workload) -> dict:
    spec = {"backend": backend, "params": params, "threads": 2,
            "workload": {**WORKLOAD, **workload, "passes": [pass_]}}
    proc = subprocess.run([sys.executable, str(PROBE), json.dumps(spec)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


UPPER_BOUND_CASES = [  # (backend, params, pass, workload changes): what dominates the cell
    ("dense", {}, "fwd+bwd", {}),  # the fused CPU flash kernel: inputs, gradients, LSE
    ("dense", {"sdpa_backend": "math"}, "fwd", {"heads": 2}),  # (B, H, L, L) scores, softmax, safe softmax
    ("frame_window", {}, "fwd", {}),  # the (L, L) mask build and SDPA's float copy of it
    ("strided", {}, "fwd+bwd", {}),
    ("moc", {}, "fwd+bwd", {}),  # impl auto: the fused C++ kernel where it builds, else gather
    ("moc", {"impl": "gather", "chunking": "tokens:4"}, "fwd+bwd", {}),  # 1,040 chunks: routing scores (B, H, L, C)
    ("moc", {"impl": "reference"}, "fwd", {}),  # (B, H, L, L) bool masks and their float copy
    # 128 shots: validation keeps every shot (2,560 tokens), so its float64 oracle outweighs the cell
    ("dense", {}, "fwd+bwd", {"shots": [128], "frames": [2], "tokens_per_frame": 16, "heads": 2}),
]


@pytest.mark.skipif(not LINUX_PROBE, reason="measures VmHWM through /proc/self/clear_refs (Linux only)")
@pytest.mark.parametrize("backend, params, pass_, workload", UPPER_BOUND_CASES,
                         ids=[f"{b}-{'-'.join(f'{k}={v}' for k, v in p.items()) or 'default'}-{s}"
                              for b, p, s, _ in UPPER_BOUND_CASES])
def test_estimate_bounds_the_measured_peak_of_a_cpu_cell(backend, params, pass_, workload):
    """est_mem_gib >= the cell's measured peak growth (validation + measurement), and not absurdly
    above it (so a wrong term shows up in either direction)."""
    r = _probe(backend, params, pass_, **workload)
    assert r["status"] == "ok", r["reason"]
    est, measured = r["est_mem_gib"] * GIB, r["growth_bytes"]
    assert measured > 20 * MIB, f"the cell is too small to test anything: {measured / MIB:.1f} MiB"
    assert est + SLACK >= measured, f"estimate {est / MIB:.1f} MiB < measured peak {measured / MIB:.1f} MiB"
    assert est <= 3 * measured + 128 * MIB, f"estimate {est / MIB:.1f} MiB, measured {measured / MIB:.1f} MiB"


def _cfg(**kw) -> BenchConfig:
    shape = dict(shots=[2], frames=[2], tokens_per_frame=8, text_tokens=4, heads=2, head_dim=16)
    shape.update(kw.pop("workload", {}))
    return BenchConfig(name="pytest", backends=[BackendEntry(name=kw.pop("backend", "dense"),
                                                             params=kw.pop("params", {}))],
                       workloads=[WorkloadConfig(name="t", passes=[kw.pop("pass_", "fwd")], **shape)], **kw)


@pytest.mark.parametrize("backend, params", [("dense", {}), ("shot_local", {}), ("moc", {"top_k": 1})])
def test_cell_over_budget_is_skipped_and_allocates_nothing(monkeypatch, backend, params):
    cfg = _cfg(backend=backend, params=params, max_memory_gib=0.001)
    cell = expand_cells(cfg)[0]

    def refuse(*args, **kwargs):
        raise AssertionError("the cell allocated its inputs although it is over budget")

    monkeypatch.setattr(torch, "randn", refuse)  # the runner and the validation draw q, k, v with it
    row = measure_cell(cell, cfg)
    assert row["status"] == "skipped", row["reason"]
    assert re.fullmatch(r"needs [0-9.e-]+ GiB, 0\.001 GiB available \(max_memory_gib\)", row["reason"]), row["reason"]
    assert row["est_mem_gib"] > 0.001


def test_every_row_records_its_estimate():
    cfg = _cfg(backend="dense", pass_="fwd+bwd",
               timing=TimingConfig(warmup=0, repeats=1, min_repeat_ms=0.0, max_inner=1))
    ok = measure_cell(expand_cells(cfg)[0], cfg)
    assert ok["status"] == "ok" and 0 < ok["est_mem_gib"] < 1
    cuda_cfg = _cfg(backend="dense")
    cuda_cfg.workloads[0].device = "cuda"
    row = measure_cell(expand_cells(cuda_cfg)[0], cuda_cfg)
    if not torch.cuda.is_available():  # skipped for its device, still with an estimate
        assert row["status"] == "skipped" and "CUDA" in row["reason"] and row["est_mem_gib"] > 0


def test_estimate_grows_with_the_pass_and_the_pattern():
    """fwd+bwd adds grad_out and the gradients; the reference MoC materialises (B, H, L, L) masks."""
    def need(**kw):
        cfg = _cfg(workload=WORKLOAD, **kw)
        return cell_memory_bytes(mocbench.get_backend(cfg.backends[0].name, **cfg.backends[0].params),
                                 expand_cells(cfg)[0], cfg)

    assert need(pass_="fwd+bwd") > need(pass_="fwd")
    assert need(backend="moc", params={"impl": "reference"}) > need(backend="moc", params={"impl": "gather"})


def test_budget_comes_from_the_flag_else_the_machine():
    assert available_bytes("cpu", 2.5) == (int(2.5 * GIB), "max_memory_gib")
    free, source = available_bytes("cpu", None)
    assert source in ("MemAvailable", "psutil available") and free > 0


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf])
def test_bad_max_memory_in_a_config_names_the_value(value):
    with pytest.raises(ConfigError, match=r"max_memory_gib \(--max-memory\) must be a finite number of GiB > 0"):
        load_bench_config(None, [f"max_memory_gib={value}"])


@pytest.mark.parametrize("value, named", [("0", "got 0.0"), ("-1", "got -1.0"), ("nan", "got nan"),
                                          ("abc", "'abc'")])
def test_bad_max_memory_flag_exits_2_with_one_line(capsys, tmp_path, value, named):
    code = main(["bench", "backends=[{name: dense}]", "--out", str(tmp_path / "s.csv"), "--no-progress",
                 f"--max-memory={value}"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "max_memory_gib" in err and named in err, err
    assert not (tmp_path / "s.csv").exists()


def _child_peak_growth(code: str) -> dict:
    """Run ``code`` (which sets ``stats``) in a fresh interpreter; its peak RSS growth over the code."""
    script = (
        "import json, resource, mocbench\n"
        "from mocbench import TokenLayout\n"
        "def rss():\n"
        "    return int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize()\n"
        "before = rss()\n"
        f"{code}\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "print(json.dumps({'growth': peak - before, 'stats': stats}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
@pytest.mark.parametrize("chunking", ["frame", "tokens:4", "fixed:4"])
def test_estimating_a_16k_chunk_layout_allocates_nothing_quadratic(chunking):
    """256 shots x 64 frames x 256 tokens (4.2M tokens; 16,640 chunks by frame, 1.05M by tokens:4):
    moc and every fixed-sparse backend are estimated without any L x L or C x C tensor (a Q x C table
    alone would take 2.2 GB by frame, 8.8 TB by tokens:4). Peak RSS growth of a fresh process, which
    sees torch's CPU allocations; the previous per-class tables took 7.3 GB here."""
    r = _child_peak_growth(
        "lay = TokenLayout.multi_shot(text_tokens=16, frames=64, tokens_per_frame=256, shots=256)\n"
        f"ch = {chunking!r}\n"
        "runs = [('moc', dict(chunking=ch)), ('moc', dict(chunking=ch, causal=False, local_anchor='chunk')),\n"
        "        ('moc', dict(chunking=ch, text_anchor=False)), ('strided', dict(chunking=ch)),\n"
        "        ('shot_local', {}), ('frame_window', {}), ('dense', {})]\n"
        "stats = {f'{n} {p}': [s.num_chunks, s.sparsity] for n, p in runs\n"
        "         for s in [mocbench.estimate(lay, n, head_dim=128, **p)]}\n")
    chunks = {k: v[0] for k, v in r["stats"].items() if k.startswith("moc")}
    assert min(chunks.values()) >= 16_000, chunks
    assert all(0 < sparsity < 1 for name, (_, sparsity) in r["stats"].items() if not name.startswith("dense"))
    assert r["growth"] < GIB, f"peak RSS grew by {r['growth'] / GIB:.2f} GiB"


def test_plan_of_a_huge_layout_stays_small(tmp_path):
    """`mocbench plan` itself ("no tensors"): a 4.2M-token, 16,640-chunk layout in a fresh process."""
    script = ("import resource, sys\nfrom mocbench.cli import main\n"
              "code = main(['plan', 'layout.shots=256', 'layout.frames=64', 'layout.text_tokens=16', "
              "'compare=[dense,shot_local,frame_window,strided]', '--json'])\n"
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr)\n"
              "sys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout)["rows"]
    assert rows[-1]["chunks"] == 16_640 and rows[-1]["tokens"] == 256 * (16 + 64 * 256)
    peak = int(proc.stderr.strip().splitlines()[-1])
    assert peak < GIB, f"mocbench plan peaked at {peak / GIB:.2f} GiB of RSS (imports included)"


def test_workspace_is_declared_by_every_backend_and_moc_impl():
    """Every registered backend answers workspace_bytes from sizes alone (a positive int, monotone in
    L); every MoC implementation declares its own."""
    from mocbench.backends.moc.impls import IMPLS
    from mocbench.registry import list_backends

    # frame geometry for the families that need it (sliding_tile, vsa); the others ignore it
    small = TokenLayout.multi_shot(text_tokens=4, frames=2, tokens_per_frame=8, shots=2, frame_shape=(2, 4))
    large = TokenLayout.multi_shot(text_tokens=4, frames=8, tokens_per_frame=8, shots=2, frame_shape=(2, 4))
    cases = [(n, {}) for n in list_backends()] + [("moc", {"impl": i}) for i in IMPLS]
    for name, params in cases:
        b = mocbench.get_backend(name, **params)
        kw = dict(batch=1, heads=2, head_dim=16, dtype=torch.float32, requires_grad=True,
                  device="cuda" if params.get("impl") == "triton" else "cpu")
        a, z = b.workspace_bytes(small, **kw), b.workspace_bytes(large, **kw)
        assert isinstance(a, int) and 0 < a <= z, (name, params, a, z)
