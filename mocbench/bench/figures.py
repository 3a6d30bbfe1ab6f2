"""Report figures (seaborn on the Agg backend), pure functions of the store DataFrame.

* :func:`latency_vs_shots`     total latency vs number of shots, log-log, dense vs MoC vs fixed
                               sparse (the shape of the paper's Fig. 5); one panel per workload/pass
* :func:`speedup_vs_sparsity`  speed-up over the reference vs measured sparsity
* :func:`speedup_by_family`    the same by family (the row's backend: MoC and the peer video attentions),
                               one line per family through its sparsity settings; one panel per workload/pass
* :func:`block_density_by_family`  measured block density (moc-spec §10) vs sparsity by family, with the
                               floor ``1 - sparsity`` a perfectly block-aligned pattern reaches
* :func:`fidelity_by_family`   per-layer fidelity to dense attention (worst rel-L2) vs sparsity by family, from
                               ``mocbench bench-model`` rows (real model shapes)
Each is saved as PNG and PDF by :func:`save`; a figure whose rows the store lacks is None (not drawn).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless; must precede pyplot

import matplotlib.pyplot as plt
import matplotlib.ticker
import pandas as pd
import seaborn as sns

FAMILY_DASHES = {"dense": "", "moc": (4, 1.5), "fixed_sparse": (1, 1)}
OTHER_DASHES = [(3, 1.25, 1.5, 1.25), (5, 1, 1, 1), (2, 2), (6, 1.5, 1, 1.5, 1, 1.5), (1, 2.5), (8, 2)]


def family_dashes(families) -> dict:
    """A dash pattern per family: the fixed ones above, the others (peer families, third-party) in turn."""
    others = iter(OTHER_DASHES * (1 + len(set(families)) // len(OTHER_DASHES)))
    return {f: FAMILY_DASHES[f] if f in FAMILY_DASHES else next(others) for f in sorted(set(families))}


def _panel(df: pd.DataFrame) -> pd.Series:
    return df["workload"] + " | " + df["device"] + " " + df["dtype"] + " " + df["pass"]


def latency_vs_shots(df: pd.DataFrame):
    ok = df[df["status"] == "ok"].assign(panel=_panel)
    if ok.empty:
        return None
    sns.set_theme(style="whitegrid", context="paper")
    grid = sns.relplot(data=ok, x="shots", y="total_ms", hue="label", style="family", markers=True,
                       dashes=family_dashes(ok["family"]), kind="line", col="panel", col_wrap=min(3, ok["panel"].nunique()),
                       height=3.2, aspect=1.25, facet_kws={"sharey": False})
    grid.set(xscale="log", yscale="log")
    for ax in grid.axes.flat:
        shots = sorted(ok["shots"].unique())
        ax.set_xticks(shots, [str(s) for s in shots])
        ax.minorticks_off()
    grid.set_axis_labels("number of shots", "latency per layer [ms]")
    grid.set_titles("{col_name}")
    grid.figure.suptitle("Attention latency vs number of shots", y=1.03)
    return grid.figure


def speedup_vs_sparsity(df: pd.DataFrame, reference: str = "dense"):
    ok = df[(df["status"] == "ok") & (df["label"] != reference) & df["speedup"].notna()]
    if ok.empty:
        return None
    sns.set_theme(style="whitegrid", context="paper")
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    sns.scatterplot(data=ok, x="sparsity", y="speedup", hue="label", style="family", size="tokens",
                    sizes=(20, 160), ax=ax)
    ax.axhline(1.0, color="0.4", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("sparsity (1 - pairs / dense pairs)")
    ax.set_ylabel(f"speed-up over {reference} (total)")
    ax.legend(fontsize="x-small", bbox_to_anchor=(1.02, 1), loc="upper left")
    ax.set_title("Speed-up vs sparsity")
    return fig


def _by_family(ok: pd.DataFrame, y: str, ylabel: str, title: str, *, log: bool, floor: bool = False):
    """One panel per workload/pass: ``y`` vs sparsity, a line per family (the backend) through its settings."""
    ok = ok.assign(panel=_panel, family=ok["backend"]).sort_values(["panel", "family", "sparsity"], kind="stable")
    sns.set_theme(style="whitegrid", context="paper")
    grid = sns.relplot(data=ok, x="sparsity", y=y, hue="family", style="family", markers=True, dashes=False,
                       kind="line", sort=False, col="panel", col_wrap=min(3, ok["panel"].nunique()), height=3.2,
                       aspect=1.25, facet_kws={"sharey": False})
    for ax in grid.axes.flat:
        if log:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        if floor:
            lo = float(ok["sparsity"].min())
            xs = [min(lo, 0.0), 1.0]
            ax.plot(xs, [1 - x for x in xs], color="0.4", lw=0.8, ls="--", label="1 - sparsity")
    grid.set_axis_labels("sparsity (1 - pairs / dense pairs)", ylabel)
    grid.set_titles("{col_name}")
    grid.figure.suptitle(title, y=1.03)
    return grid.figure


def speedup_by_family(df: pd.DataFrame, reference: str = "dense"):
    """Speed-up over ``reference`` (paired where measured so) vs measured sparsity, by family."""
    ok = df[(df["status"] == "ok") & (df["label"] != reference) & df["speedup"].notna() & df["sparsity"].notna()]
    if ok.empty:
        return None
    ax_label = f"speed-up over {reference} (total)"
    fig = _by_family(ok, "speedup", ax_label, "Speed-up vs sparsity, by family", log=True)
    for ax in fig.axes:
        ax.axhline(1.0, color="0.4", lw=0.8, ls="--")
    return fig


def block_density_by_family(df: pd.DataFrame, reference: str = "dense"):
    """Measured block density vs sparsity, by family; the dashed line is ``1 - sparsity`` (no wasted tile)."""
    if "block_density" not in df.columns:
        return None
    density = pd.to_numeric(df["block_density"], errors="coerce")
    ok = df.assign(block_density=density)
    ok = ok[(ok["status"] == "ok") & (ok["label"] != reference) & density.notna() & ok["sparsity"].notna()]
    if ok.empty:
        return None
    return _by_family(ok, "block_density", "block density (visited 128x128 tiles; dashed: 1 - sparsity)",
                      "Block density vs sparsity, by family", log=False, floor=True)


def fidelity_by_family(model_rows: pd.DataFrame):
    """Worst per-layer rel-L2 to the model's dense attention vs sparsity, by family (``mocbench bench-model``
    rows with fidelity; the model's own attention row has none)."""
    if "fidelity_rel_l2_max" not in model_rows.columns or "sparsity" not in model_rows.columns:
        return None
    rel = pd.to_numeric(model_rows["fidelity_rel_l2_max"], errors="coerce")
    ok = model_rows.assign(fidelity_rel_l2_max=rel)
    ok = ok[(ok["status"] == "ok") & rel.notna() & (rel > 0) & pd.to_numeric(ok["sparsity"], errors="coerce").notna()]
    if ok.empty:
        return None
    ok = ok.assign(workload=ok["config_name"].astype(str) + " " + ok["model"].astype(str))
    return _by_family(ok, "fidelity_rel_l2_max", "worst per-layer rel-L2 vs dense attention",
                      "Fidelity vs sparsity, by family (real model shapes)", log=True)


def save(fig, out_dir: Path, stem: str) -> list[Path]:
    if fig is None:
        return []
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    for p in paths:  # no timestamps in the files: the same store gives byte-identical figures
        metadata = {"CreationDate": None} if p.suffix == ".pdf" else {"Software": None}
        fig.savefig(p, dpi=150, bbox_inches="tight", metadata=metadata)
    plt.close(fig)
    return paths
