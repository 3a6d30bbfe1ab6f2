"""Sweep reports: ablation tables (Markdown / LaTeX / CSV) and figures from a sweep's result store,
and shot-to-shot routing heatmaps from the ``routing.json`` files recorded while sampling.

* ``ablations.md`` / ``.tex`` / ``.csv``: one section per ablation, one row per cell: analytic and
  measured (routed) sparsity, quality (PSNR / SSIM vs dense, held-out loss, entity / scene recall of
  :mod:`mocbench.eval.recall` with its chance level), routing
  (cross-shot fraction, mutual pairs) and kernel latency;
* ``figures/pareto.png``: quality vs sparsity, Pareto front marked;
* ``figures/sparsity_vs_chunk.png``: sparsity vs chunk size at fixed top-k;
* ``figures/routing.png``: per layer (rows) and cell (columns) the shot a -> shot b share of routed
  slots, causal cells next to non-causal ones.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from mocbench.bench.store import load_table
from mocbench.bench.tables import to_latex, to_markdown
from mocbench.errors import ConfigError, read_json

COLUMNS = {  # store column -> table header
    "label": "cell", "est_sparsity": "sparsity (analytic)", "routed_sparsity": "sparsity (routed)",
    "psnr": "PSNR vs dense", "ssim": "SSIM", "val_loss": "val loss", "entity_recall": "entity recall",
    "chance": "recall chance", "scene_recall": "scene recall", "cross_shot_fraction": "cross-shot routed",
    "mutual_rate": "mutual rate",
    "bench_est_sparsity": "bench sparsity", "bench_total_ms": "bench ms", "status": "status",
}


def load_rows(stores) -> pd.DataFrame:
    df = load_table(stores)
    if "backend" not in df.columns:
        names = ", ".join(map(str, [stores] if isinstance(stores, (str, Path)) else stores))
        raise ConfigError(f"result store {names} has no 'backend' column: not written by `mocbench sweep`")
    return df


def ablation_table(df: pd.DataFrame, ablation: str) -> pd.DataFrame:
    mask = df["ablation"].fillna("").astype(str).str.split(";").apply(lambda xs: ablation in xs)
    sub = df[mask].copy()
    if "params" in sub and len(sub) > 1:  # name each cell by the backend params that vary in this ablation
        params = [dict(json.loads(p) if isinstance(p, str) and p else {}, backend=b)
                  for p, b in zip(sub["params"], sub["backend"])]
        keys = [k for k in dict.fromkeys(k for p in params for k in p) if len({str(p.get(k)) for p in params}) > 1]
        if keys:
            sub["label"] = [", ".join(f"{k}={p.get(k, '-')}" for k in keys) for p in params]
    cols = [c for c in COLUMNS if c in sub.columns]
    t = sub[cols].rename(columns=COLUMNS)
    return t.reset_index(drop=True)


def ablations_of(df: pd.DataFrame) -> list[str]:
    seen: list[str] = []
    for a in df.get("ablation", pd.Series(dtype=str)).fillna("").astype(str):
        for x in a.split(";"):
            if x and x not in seen:
                seen.append(x)
    return seen or [""]


def write_tables(df: pd.DataFrame, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    md, tex, frames = ["# Ablations\n"], [], []
    for ab in ablations_of(df):
        t = ablation_table(df, ab) if ab else df[[c for c in COLUMNS if c in df.columns]].rename(columns=COLUMNS)
        md += [f"## {ab or 'all cells'}\n", to_markdown(t)]
        tex.append(to_latex(t, caption=f"Ablation: {ab}" if ab else "Sweep"))
        frames.append(t.assign(ablation=ab))
    paths = [out / "ablations.md", out / "ablations.tex", out / "ablations.csv"]
    paths[0].write_text("\n".join(md))
    paths[1].write_text("\n".join(tex))
    pd.concat(frames, ignore_index=True).to_csv(paths[2], index=False)
    return paths


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _sparsity(df: pd.DataFrame) -> pd.Series:
    s = df["routed_sparsity"] if "routed_sparsity" in df else pd.Series(float("nan"), index=df.index)
    return s.fillna(df["est_sparsity"]) if "est_sparsity" in df else s


def pareto_figure(df: pd.DataFrame, path: Path) -> Path | None:
    ok = df[df["status"] == "ok"].copy() if "status" in df else df.copy()
    metrics = [m for m in ("psnr", "val_loss") if m in ok and ok[m].notna().any()]
    if ok.empty or not metrics:
        return None
    plt = _plt()
    ok["x"] = _sparsity(ok)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.2), squeeze=False)
    colors = {ab: f"C{i % 10}" for i, ab in enumerate(ablations_of(ok))}
    for ax, m in zip(axes[0], metrics):
        d = ok[ok[m].notna() & ok["x"].notna() & (ok[m].abs() != float("inf"))]
        for ab in ablations_of(d):
            sel = d[d["ablation"].fillna("").astype(str).str.split(";").apply(lambda xs, ab=ab: ab in xs)] if ab else d
            ax.scatter(sel["x"], sel[m], label=ab or "cells", s=28, alpha=0.8, color=colors.get(ab, "C0"))
        better = (lambda a, b: a >= b) if m == "psnr" else (lambda a, b: a <= b)
        pts = sorted(zip(d["x"], d[m]), key=lambda p: -p[0])
        front, best = [], None
        for x, y in pts:  # sweep from sparsest: keep points whose quality beats every sparser one
            if best is None or better(y, best) and y != best:
                front.append((x, y))
                best = y
        if front:
            fx, fy = zip(*sorted(front))
            ax.plot(fx, fy, "k--", lw=1, label="Pareto front")
        ax.set_xlabel("sparsity (routed during sampling; analytic if none)")
        ax.set_ylabel({"psnr": "PSNR vs dense (dB, higher is better)", "val_loss": "held-out loss (lower is better)"}[m])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Quality vs sparsity (one dense-trained model, MoC swapped in at sampling)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def chunk_tokens(params: str) -> tuple[str, int] | None:
    try:
        ch = json.loads(params).get("chunking", "")
    except (TypeError, ValueError):
        return None
    m = re.fullmatch(r"(tokens|fixed):(\d+)", str(ch))
    return (m.group(1), int(m.group(2))) if m else None


def chunk_figure(df: pd.DataFrame, path: Path) -> Path | None:
    d = df[(df["backend"] == "moc") & (df["status"] == "ok")].copy() if "status" in df else df.copy()
    d["chunk"] = d["params"].apply(chunk_tokens)
    d = d[d["chunk"].notna()]
    if "ablation" in d:
        ch = d[d["ablation"].fillna("").astype(str).str.contains("chunk_size")]
        d = ch if len(ch) >= 2 else d
    d = d[d["chunk"].apply(lambda c: c[0] == "tokens")]
    if len(d) < 2:
        return None
    d["m"] = d["chunk"].apply(lambda c: c[1])
    d = d.sort_values("m")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for col, label in (("est_sparsity", "task layout, analytic"), ("routed_sparsity", "task layout, routed"),
                       ("bench_est_sparsity", "bench layout, analytic")):
        if col in d and d[col].notna().any():
            ax.plot(d["m"], d[col], "o-", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("chunk size (tokens:m)")
    ax.set_ylabel("sparsity")
    ax.set_title("Sparsity vs chunk size at fixed top-k")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def routing_figure(files, path: Path) -> Path:
    """Heatmaps of the share of routed slots from query shot a (rows) to shot b (columns)."""
    runs = [read_json(f, "routing file") for f in files]
    if not runs:
        raise ValueError("routing figure: no routing files given")
    for f, r in zip(files, runs):
        if not isinstance(r, dict) or not isinstance(r.get("layers"), list) or "total" not in r:
            raise ConfigError(f"routing file {str(f)!r} is not a routing.json written by `mocbench sweep` "
                              f"(no 'layers' and 'total')")
    runs.sort(key=lambda r: (not r.get("params", {}).get("causal", True), json.dumps(r.get("params"), sort_keys=True)))
    n_layers = max(len(r["layers"]) for r in runs)
    plt = _plt()
    fig, axes = plt.subplots(n_layers + 1, len(runs), figsize=(2.6 * len(runs) + 0.6, 2.3 * (n_layers + 1)),
                             squeeze=False)
    for j, r in enumerate(runs):
        mats = [np.array(layer["counts"]).sum(0) for layer in r["layers"]]
        rows = [("all layers", sum(mats), r["total"])] + [(f"layer {layer['layer']}", m, layer)
                                                         for layer, m in zip(r["layers"], mats)]
        for i, (name, m, st) in enumerate(rows):
            ax = axes[i][j]
            share = m / np.maximum(m.sum(1, keepdims=True), 1)
            ax.imshow(share, vmin=0, vmax=1, cmap="viridis")
            for (a, b), c in np.ndenumerate(m):
                ax.text(b, a, f"{share[a, b]:.2f}\n({c})", ha="center", va="center", fontsize=6,
                        color="w" if share[a, b] < 0.6 else "k")
            ax.set_xticks(range(m.shape[1]))
            ax.set_yticks(range(m.shape[0]))
            if i == 0:
                p = r.get("params", {})
                local = p.get("local_anchor") or "default"
                ax.set_title(f"causal={p.get('causal', True)} k={p.get('top_k')} local={local}\n"
                             f"{p.get('chunking', '')} mutual={st['mutual']}/{st['units']}", fontsize=7)
            ax.set_ylabel(f"{name}\nquery shot", fontsize=7)
            ax.set_xlabel(f"routed shot (sparsity {st['sparsity']:.2f})", fontsize=7)
    fig.suptitle("MoC shot-to-shot routing (share of routed slots, counts)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def copy_routing(df: pd.DataFrame, sweep_out: Path, dest: Path) -> list[Path]:
    """Routing JSONs of the sweep's MoC cells into ``dest`` (named by ablation cell and key)."""
    out = []
    for r in df.itertuples(index=False):
        src = sweep_out / "cells" / str(r.key) / "routing.json"
        if src.is_file():
            params = json.loads(r.params) if isinstance(r.params, str) and r.params else {}
            name = re.sub(r"[^A-Za-z0-9_.=-]+", "-",
                          "_".join([r.backend, *(f"{k}={v}" for k, v in sorted(params.items())), str(r.key)]))
            dest.mkdir(parents=True, exist_ok=True)
            out.append(Path(shutil.copyfile(src, dest / f"{name}.json")))
    return out


def write_report(stores, out: Path, *, figures: bool = True, sweep_out: Path | None = None) -> list[Path]:
    df = load_rows(stores)
    written = write_tables(df, out)
    if figures:
        written += [p for p in (pareto_figure(df, out / "figures" / "pareto.png"),
                                chunk_figure(df, out / "figures" / "sparsity_vs_chunk.png")) if p]
    if sweep_out is not None:
        routing = copy_routing(df, sweep_out, out / "routing")
        written += routing
        in_causal = df["ablation"].fillna("").astype(str).str.split(";").apply(lambda xs: "causal" in xs)
        causal = [p for p in routing if any(str(k) in p.name for k in df.loc[in_causal, "key"])]
        if figures and causal:
            written.append(routing_figure(causal, out / "figures" / "routing_causal_vs_noncausal.png"))
        if figures and routing:
            written.append(routing_figure(routing, out / "figures" / "routing_all.png"))
    return written


def write_sweep_report(cfg) -> list[Path]:
    sweep_out = Path(cfg.out_path)
    out = Path(cfg.results_dir) if cfg.results_dir else sweep_out
    written = write_report(sweep_out / "results.csv", out, sweep_out=sweep_out)
    if out != sweep_out:
        shutil.copyfile(sweep_out / "results.csv", out / "results.csv")
        written.append(out / "results.csv")
    return written


def cmd_report_sweep(args) -> int:
    console = Console()
    if args.figure == "routing":
        out = Path(args.out) if args.out else Path(args.stores[0]).parent
        written = [routing_figure(args.stores, out / "routing.png")]
    else:
        out = Path(args.out) if args.out else Path(args.stores[0]).parent
        sweep_out = Path(args.stores[0]).parent
        written = write_report(args.stores, out, figures=not args.no_figures,
                               sweep_out=sweep_out if (sweep_out / "cells").is_dir() else None)
        console.print(written[0].read_text(), highlight=False)
    console.print("wrote " + ", ".join(map(str, written)), highlight=False)
    return 0
