"""CPU forward timing: dense SDPA vs the CPU MoC impls ('fused', 'gather') at ~8k/16k/32k tokens, one run.

Setup: fp32, batch 1, heads 2, head_dim 64, single-shot stream (64 caption tokens + F frames of
256 tokens), chunking="frame" (256-token chunks), MoC defaults otherwise (text anchor, local anchor
"chunk" for single-shot, causal routing). ``top_k`` is chosen per length from the analytic estimate
to give the sparsity closest to 87.5%; the *measured* sparsity (``backend.stats``) is reported.

Timed with ``torch.utils.benchmark.Timer.blocked_autorange`` after a warm-up call, measurements of
dense and MoC interleaved; median and IQR over the autorange blocks:
  dense      F.scaled_dot_product_attention (get_backend("dense").forward), measured before and
             after the MoC timings of each length; the ratio uses the mean of the two medians
  prepare    MoC routing + index building (backend.prepare)
  attention  MoC forward on a prepared plan (backend.forward)
  total      prepare + forward (backend(q, k, v, layout)): what a model layer pays
Before timing, every impl is validated against impl 'reference' (same plan) on small multi-shot cases.
Effective throughput: attended (query, key) pairs x 4 x head_dim / seconds (the spec's FLOP count).

Run:  .venv/bin/python benchmarks/cpu_moc.py [--lengths 8k,16k,32k] [--impls fused,gather] [--min-run-time 2]
Writes results/cpu_moc/{results.csv, env.json, README.md}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mocbench  # noqa: E402
from mocbench.backends.moc.impls import IMPLS  # noqa: E402

OUT = ROOT / "results" / "cpu_moc"
TEXT, TPF, HEADS, HEAD_DIM, TARGET = 64, 256, 2, 64, 0.875
FRAMES = {"8k": 32, "16k": 64, "32k": 128}


def layout_for(frames: int) -> mocbench.TokenLayout:
    return mocbench.TokenLayout.single_shot(text_tokens=TEXT, frames=frames, tokens_per_frame=TPF)


def pick_top_k(layout) -> int:
    best = min(range(0, layout.chunks("frame").num_chunks + 1),
               key=lambda k: abs(mocbench.estimate(layout, "moc", head_dim=HEAD_DIM, heads=HEADS, top_k=k,
                                                   chunking="frame").sparsity - TARGET))
    return best


def validate(impls: list[str]) -> float:
    """Every impl vs reference (same plan) on small multi-shot cases with every feature on."""
    layout = mocbench.TokenLayout.multi_shot(text_tokens=[5, 3, 4], frames=[3, 4, 2], tokens_per_frame=16)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, layout.num_tokens, HEAD_DIM, generator=g) for _ in range(3))
    worst = 0.0
    for chunking in ("frame", "fixed:24"):
        be = mocbench.get_backend("moc", impl="reference", top_k=3, chunking=chunking)
        plan = be.prepare(q, k, layout)
        ref = IMPLS["reference"].forward(q, k, v, plan)
        for name in impls:
            worst = max(worst, (IMPLS[name].forward(q, k, v, plan) - ref).abs().max().item())
    if worst > 1e-5:
        raise SystemExit(f"an impl differs from reference by {worst:.3g} > 1e-5; not timing")
    return worst


def measure(stmt: str, env: dict, min_run_time: float):
    t = Timer(stmt=stmt, globals=env, num_threads=torch.get_num_threads())
    t.timeit(1)  # warm-up
    m = t.blocked_autorange(min_run_time=min_run_time)
    return m.median, m.iqr, len(m.times)


def env_info() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        sha = ""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu_model": model, "logical_cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "git_sha": sha,
            "loadavg_at_end": load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="8k,16k,32k")
    ap.add_argument("--impls", default="fused,gather")
    ap.add_argument("--min-run-time", type=float, default=2.0)
    args = ap.parse_args()
    impls = args.impls.split(",")
    for name in impls:
        if name not in IMPLS or "cpu" not in IMPLS[name].devices:
            raise SystemExit(f"--impls: {name!r} is not a CPU MoC impl; choose from "
                             f"{sorted(n for n, i in IMPLS.items() if 'cpu' in i.devices)}")
        if (why := IMPLS[name].unavailable_reason()) is not None:
            raise SystemExit(f"--impls: {name!r} is unavailable here: {why}")
    err = validate(impls)
    print(f"validation: {', '.join(impls)} vs reference max abs err {err:.2e} (fp32)")
    rows = []
    for name in args.lengths.split(","):
        layout = layout_for(FRAMES[name])
        L = layout.num_tokens
        top_k = pick_top_k(layout)
        g = torch.Generator().manual_seed(1)
        q, k, v = (torch.randn(1, HEADS, L, HEAD_DIM, generator=g) for _ in range(3))
        dense = mocbench.get_backend("dense")
        env = dict(q=q, k=k, v=v, layout=layout, dense=dense, dplan=dense.prepare(q, k, layout))
        d1 = measure("dense.forward(q, k, v, dplan)", env, args.min_run_time)
        per_impl = {}
        for impl in impls:
            moc = mocbench.get_backend("moc", impl=impl, top_k=top_k, chunking="frame")
            st = moc.stats(q, k, layout)
            env.update(moc=moc, plan=moc.prepare(q, k, layout))
            per_impl[impl] = (st, {key: measure(stmt, env, args.min_run_time) for key, stmt in (
                ("prepare", "moc.prepare(q, k, layout)"), ("attention", "moc.forward(q, k, v, plan)"),
                ("total", "moc(q, k, v, layout)"))})
        d2 = measure("dense.forward(q, k, v, dplan)", env, args.min_run_time)
        d_med = (d1[0] + d2[0]) / 2  # dense before and after the MoC timings (exposes load drift)
        dense_tflops = 4 * HEAD_DIM * HEADS * L * L / d_med / 1e12
        for impl, (st, res) in per_impl.items():
            row = {"impl": impl, "tokens": L, "frames": FRAMES[name], "top_k": top_k,
                   "sparsity": round(st.sparsity, 4), "dense_s": d_med, "dense_iqr_s": max(d1[1], d2[1]),
                   "dense_first_s": d1[0], "dense_second_s": d2[0],
                   "prepare_s": res["prepare"][0], "prepare_iqr_s": res["prepare"][1],
                   "attention_s": res["attention"][0], "attention_iqr_s": res["attention"][1],
                   "total_s": res["total"][0], "total_iqr_s": res["total"][1],
                   "speedup_attention": d_med / res["attention"][0], "speedup_total": d_med / res["total"][0],
                   "dense_tflops": dense_tflops,
                   "moc_tflops_effective": 4 * HEAD_DIM * st.pairs / res["attention"][0] / 1e12}
            rows.append(row)
            print(f"L={L:6d} {impl:7s} top_k={top_k:2d} sparsity={row['sparsity']:.4f}  dense {d_med:.3f}s "
                  f"(runs {d1[0]:.3f}/{d2[0]:.3f})  prepare {row['prepare_s']:.3f}s  "
                  f"attention {row['attention_s']:.3f}s  total {row['total_s']:.3f}s  "
                  f"speedup attention {row['speedup_attention']:.2f}x  total {row['speedup_total']:.2f}x", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    info = env_info()
    (OUT / "env.json").write_text(json.dumps(info, indent=2) + "\n")
    header = ["| impl | tokens | top_k | sparsity | dense s | prepare s | attention s | total s | dense/attention "
              "| dense/total | TFLOP/s dense | TFLOP/s MoC (attended pairs) |", "|" + "---|" * 12]
    table = [f"| {r['impl']} | {r['tokens']} | {r['top_k']} | {r['sparsity']:.4f} | {r['dense_s']:.3f} | "
             f"{r['prepare_s']:.3f} | {r['attention_s']:.3f} | {r['total_s']:.3f} | {r['speedup_attention']:.2f}x | "
             f"{r['speedup_total']:.2f}x | {r['dense_tflops']:.3f} | {r['moc_tflops_effective']:.3f} |" for r in rows]
    print("\n".join(header + table))
    print(json.dumps(info))
    cmd = ".venv/bin/python benchmarks/cpu_moc.py " + " ".join(sys.argv[1:])
    (OUT / "README.md").write_text(
        "# CPU: MoC impls vs dense SDPA, forward\n\n"
        f"Command: `{cmd.strip()}` (written by the script; every number below is from that run).\n\n"
        f"fp32, batch 1, heads {HEADS}, head_dim {HEAD_DIM}, single-shot stream: {TEXT} caption tokens + frames of "
        f"{TPF} tokens, chunking=frame, causal routing, text anchor + own-chunk anchor; top_k picked for ~87.5% "
        "sparsity (measured sparsity from backend.stats). torch.utils.benchmark blocked_autorange medians; "
        "dense = mean of two medians taken before and after the MoC timings of the same length. prepare = routing "
        "+ index building; attention = forward on a prepared plan; total = prepare + forward (what a layer pays). "
        "TFLOP/s: 4 x head_dim x attended pairs / attention time (dense: all L^2 pairs).\n\n"
        + "\n".join(header + table)
        + f"\n\nEnvironment: {info['cpu_model']}, {info['logical_cpus']} logical CPUs, torch {info['torch']}, "
        f"{info['torch_threads']} threads, git {info['git_sha'][:12]}, load average at the end {info['loadavg_at_end']}. "
        "Dense and MoC were measured in the same process, interleaved. Raw numbers (with IQRs): results.csv; "
        "env: env.json; console output: run.log.\n")
    return rows, info, table


if __name__ == "__main__":
    main()
