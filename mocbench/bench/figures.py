"""Report figures (seaborn on the Agg backend), pure functions of the store DataFrame.

* :func:`latency_vs_shots`     total latency vs number of shots, log-log, dense vs MoC vs fixed
                               sparse (the shape of the paper's Fig. 5); one panel per workload/pass
* :func:`speedup_vs_sparsity`  speed-up over the reference vs measured sparsity
Each is saved as PNG and PDF by :func:`save`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless; must precede pyplot

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

FAMILY_DASHES = {"dense": "", "moc": (4, 1.5), "fixed_sparse": (1, 1)}


def _panel(df: pd.DataFrame) -> pd.Series:
    return df["workload"] + " | " + df["device"] + " " + df["dtype"] + " " + df["pass"]


def latency_vs_shots(df: pd.DataFrame):
    ok = df[df["status"] == "ok"].assign(panel=_panel)
    if ok.empty:
        return None
    sns.set_theme(style="whitegrid", context="paper")
    grid = sns.relplot(data=ok, x="shots", y="total_ms", hue="label", style="family", markers=True,
                       dashes=FAMILY_DASHES, kind="line", col="panel", col_wrap=min(3, ok["panel"].nunique()),
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


def save(fig, out_dir: Path, stem: str) -> list[Path]:
    if fig is None:
        return []
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    for p in paths:  # no timestamps in the files: the same store gives byte-identical figures
        metadata = {"CreationDate": None} if p.suffix == ".pdf" else {"Software": None}
        fig.savefig(p, dpi=150, bbox_inches="tight", metadata=metadata)
    plt.close(fig)
    return paths
