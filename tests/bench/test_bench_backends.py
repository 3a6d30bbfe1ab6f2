"""pytest-benchmark suite: every registered backend x a few shapes, validated before it is timed.

In the normal test run benchmarks are disabled (``--benchmark-disable`` in pyproject's addopts),
so each case runs once as a smoke test on tiny shapes. Time them with::

    pytest tests/bench --benchmark-enable --benchmark-json=bench.json
    pytest tests/bench --benchmark-enable --benchmark-compare=0001 --benchmark-compare-fail=median:15%

Unavailable backends (missing package, wrong device/dtype) are skipped with their reasons.
On CUDA every round is synchronised (pedantic, with ``torch.cuda.synchronize`` in setup and
inside the timed call) so the timer sees the kernels, not their launch.
"""

from __future__ import annotations

import pytest
import torch

from mocbench.backends.moc.impls import IMPLS
from mocbench.bench.config import BackendEntry, BenchConfig, WorkloadConfig, expand_cells
from mocbench.bench.runner import skip_reasons
from mocbench.bench.validate import small_layout, validate_backend
from mocbench.registry import get_backend, list_backends

PARAMS = {"moc": {"top_k": 2, "chunking": "frame"}, "strided": {"stride": 2}}
# every backend with its default params, plus each MoC implementation by name ("moc" alone is impl="auto")
CASES = {name: (name, PARAMS.get(name, {})) for name in list_backends()}
CASES.update({f"moc-{impl}": ("moc", {**PARAMS["moc"], "impl": impl}) for impl in IMPLS if impl != "reference"})
SHAPES = {  # id -> workload fields; tiny so that --benchmark-disable runs in seconds on a CPU
    "1shot": dict(shots=[1], frames=[4], tokens_per_frame=16, frame_shape=[4, 4], text_tokens=8, heads=2, head_dim=32),
    "4shot": dict(shots=[4], frames=[2], tokens_per_frame=16, frame_shape=[4, 4], text_tokens=8, heads=2, head_dim=32),
}
DEVICES = [("cpu", "float32")] + ([("cuda", "bfloat16")] if torch.cuda.is_available() else [])


def _cell(name: str, params: dict, shape: dict, device: str, dtype: str):
    cfg = BenchConfig(name="pytest", backends=[BackendEntry(name=name, params=params)],
                      workloads=[WorkloadConfig(name="pytest", device=device, dtype=dtype, **shape)])
    return expand_cells(cfg)[0]


@pytest.mark.parametrize("device, dtype", DEVICES, ids=[d for d, _ in DEVICES])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
@pytest.mark.parametrize("case", list(CASES))
def test_backend_forward(benchmark, case, shape, device, dtype):
    """Skip with reasons, validate against the float64 masked reference, then time prepare+forward."""
    name, params = CASES[case]
    cell = _cell(name, params, SHAPES[shape], device, dtype)
    backend = get_backend(name, **cell.params)
    reasons = skip_reasons(backend, cell)
    if reasons:
        pytest.skip(f"{backend.label}: " + "; ".join(reasons))

    small = small_layout(cell.geometry, max_frames=3, max_tokens_per_frame=8, max_text_tokens=4)
    check = validate_backend(backend, small, head_dim=cell.head_dim, dtype=cell.torch_dtype, device=device)
    assert check.ok, check.message(backend.label, dtype)

    layout = cell.layout()
    gen = torch.Generator().manual_seed(0)
    shape_ = (cell.batch, cell.heads, layout.num_tokens, cell.head_dim)
    q, k, v = (torch.randn(shape_, generator=gen).to(device=device, dtype=cell.torch_dtype) for _ in range(3))
    stats = backend.stats(q, k, layout)
    est = backend.estimate(layout, head_dim=cell.head_dim, batch=cell.batch, heads=cell.heads)
    benchmark.group = f"{shape}-{device}-{dtype}"
    benchmark.extra_info.update(
        backend=backend.label, tokens=layout.num_tokens, layout=layout.describe(), sparsity=stats.sparsity,
        pairs=stats.pairs, attention_flops=stats.attention_flops, total_flops=stats.total_flops,
        dense_flops=stats.dense_flops, est_total_flops=est.total_flops, validation_max_err=check.max_abs_err,
    )

    def run():
        with torch.no_grad():
            out = backend.forward(q, k, v, backend.prepare(q, k, layout))
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    if device == "cuda":
        out = benchmark.pedantic(run, setup=torch.cuda.synchronize, rounds=20, warmup_rounds=3)
    else:
        out = benchmark(run)
    assert out.shape == q.shape and torch.isfinite(out).all()
    if benchmark.stats is not None:  # None under --benchmark-disable
        median_s = benchmark.stats.stats.median
        benchmark.extra_info["tflops"] = stats.total_flops / median_s / 1e12 if median_s > 0 else float("nan")
