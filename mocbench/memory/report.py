"""Tables and figures of ``mocbench memory`` from ``memory.csv`` alone (pure functions of the store).

- ``memory.md``: one line per row: training, sparsity, entity recall with its 95 % bootstrap
  interval, chance, the difference to the reference row with a two-proportion z-test (story-
  clustered, :func:`mocbench.eval.recall.two_proportion_test`), scene recall, the held-out flow loss
  of shot 0 and of later shots, and, for MoC, the share of later shots' routed chunks that lie in
  shot 0. Nothing is bold: the intervals and p-values say what noise could explain.
- ``recall_vs_sparsity.png``: entity recall with intervals against sparsity, chance per row marked.
- ``contact_sheet.png``: the first stories, one row per shot; ground truth, then every row in table order.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from mocbench.eval.recall import per_story_recall, two_proportion_test

GT_LABEL = "ground truth"


def load_rows(store: str | Path) -> pd.DataFrame:
    from mocbench.bench.store import load_table

    df = load_table(store)
    df = df[df["status"] == "ok"].copy()
    if "order" in df:
        df = df.sort_values("order", key=lambda s: pd.to_numeric(s, errors="coerce"))
    return df.reset_index(drop=True)


def with_tests(df: pd.DataFrame, reference: str = "dense") -> pd.DataFrame:
    """``df`` plus ``diff_vs_ref``, ``z_vs_ref``, ``p_vs_ref`` (entity recall) and ``scene_p_vs_ref``."""
    df = df.copy()
    ref = df[df["label"] == reference]
    for col in ("diff_vs_ref", "z_vs_ref", "p_vs_ref", "scene_p_vs_ref"):
        df[col] = math.nan
    if ref.empty:
        return df
    r = ref.iloc[0]
    ref_e = per_story_recall(r["entity_per_story"], int(r["shots"]))
    ref_s = per_story_recall(r["scene_per_story"], int(r["shots"]))
    for i, row in df.iterrows():
        if row["label"] in (reference, GT_LABEL):
            continue
        e = per_story_recall(row["entity_per_story"], int(row["shots"]))
        s = per_story_recall(row["scene_per_story"], int(row["shots"]))
        z, p = two_proportion_test(e, ref_e)
        df.loc[i, ["diff_vs_ref", "z_vs_ref", "p_vs_ref"]] = [e.mean() - ref_e.mean(), z, p]
        df.loc[i, "scene_p_vs_ref"] = two_proportion_test(s, ref_s)[1]
    return df


def _num(v, fmt: str = "{:.3f}") -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(f) else fmt.format(f)


def _p(v) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "-"
    if math.isnan(f):
        return "-"
    return "< 1e-10" if f < 1e-10 else f"{f:.2g}"


def to_markdown(df: pd.DataFrame, reference: str = "dense", title: str = "Memory benchmark") -> str:
    df = with_tests(df, reference)
    head = ["row", "training", "sparsity", "entity recall [95% CI]", "chance", f"Δ vs {reference} (p)",
            "scene recall [95% CI]", "scene chance", "entity found", "loss shot 0 / later", "MoC: routed to shot 0 (uniform)"]
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for _, r in df.iterrows():
        gt = r["label"] == GT_LABEL
        diff = "ref" if r["label"] == reference else "-" if gt else \
            f"{float(r['diff_vs_ref']):+.3f} ({_p(r['p_vs_ref'])})"
        label = r["label"] + (f" ({r['note']})" if str(r.get("note", "") or "") not in ("", "nan") and not gt else "")
        cells = [label, str(r.get("training", "-")), _num(r.get("sparsity"), "{:.1%}"),
                 f"{_num(r['entity_recall'])} [{_num(r['entity_lo'])}, {_num(r['entity_hi'])}]", _num(r["chance"]), diff,
                 f"{_num(r['scene_recall'])} [{_num(r['scene_lo'])}, {_num(r['scene_hi'])}]", _num(r["scene_chance"]),
                 _num(r["entity_found"]),
                 "-" if gt else f"{_num(r.get('loss_shot0'), '{:.4f}')} / {_num(r.get('loss_later'), '{:.4f}')}",
                 _num(r.get("routed_to_shot0"), "{:.2f}")
                 + (f" ({_num(r.get('routed_to_shot0_uniform'), '{:.2f}')})" if _num(r.get("routed_to_shot0")) != "-" else "")]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    n = df["stories"].dropna()
    shots = df["shots"].dropna()
    stories = int(float(n.iloc[0])) if len(n) else 0
    pairs = stories * (int(float(shots.iloc[0])) - 1) if len(shots) else 0
    notes = [
        (f"{stories} stories x {pairs // max(stories, 1)} later shots = {pairs} shot pairs per row; every row samples "
         "the same stories with the same noise. Recall: the dominant palette colour of a later shot equals shot 0's, "
         "read from the generated frames alone (mocbench/eval/recall.py); a shot with no entity found is a miss."),
        ("Chance: the same comparison against shot 0 of *other* stories (what drawing plausible colours with no "
         "memory scores). 95% intervals: percentile bootstrap over stories."),
        (f"Δ vs {reference}: difference in entity recall; p: two-sided two-proportion z-test with story-clustered "
         "standard errors (the pairs of one story are not independent)."),
        ("training: trained = trained from scratch with this backend; finetuned = trained with this backend starting from "
         "another run's weights (init_from); swap = this backend put into other weights without training."),
        ("Sparsity: analytic (mocbench.estimate) on the task's layout. Loss: held-out flow loss (val split, fixed "
         "noise and t) of shot 0 and the mean of later shots. Routed to shot 0: of the routed chunks chosen by "
         "queries of shots >= 1 (all layers, heads, sampling steps), the share in shot 0; in brackets the share "
         "if every query picked uniformly among its causal candidates."),
    ]
    return "\n".join([*lines, "", *[f"<sub>{x}</sub>  " for x in notes]]) + "\n"


def recall_figure(df: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = df[df["label"] != GT_LABEL]
    markers = {"trained": "o", "finetuned": "s", "swap": "^"}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    seen: dict[float, int] = {}
    for _, r in rows.iterrows():
        x, y = float(r["sparsity"]), float(r["entity_recall"])
        x += 0.006 * seen.setdefault(round(x, 4), 0)  # rows at the same sparsity side by side, not on top
        seen[round(float(r["sparsity"]), 4)] += 1
        err = [[y - float(r["entity_lo"])], [float(r["entity_hi"]) - y]]
        name = r["label"] if str(r["training"]) in str(r["label"]) else f"{r['label']} ({r['training']})"
        ax.errorbar([x], [y], yerr=err, fmt=markers.get(r["training"], "o"), capsize=3, label=name)
        ax.plot([x - 0.008, x + 0.008], [float(r["chance"])] * 2, color="grey", lw=2)
    ax.plot([], [], color="grey", lw=2, label="chance (cross-story)")
    ax.set_xlabel("attention sparsity (analytic)")
    ax.set_ylabel("entity colour recall vs shot 0 (95% CI)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def contact_sheet(df: pd.DataFrame, stories: int, truth: np.ndarray | None, path: Path) -> Path | None:
    """Ground truth then every row's samples side by side, for the first ``stories`` stories."""
    import torch

    from mocbench.tasks.media import contact_sheet as sheet
    from mocbench.tasks.media import stack_sheets, write_png

    rows = df[(df["label"] != GT_LABEL) & df.get("samples_file", pd.Series(dtype=str)).notna()]
    vids = [np.load(f)["videos"] for f in rows["samples_file"] if Path(str(f)).is_file()]
    if not vids or stories == 0:
        return None
    n = min(stories, len(vids[0]))
    to_t = lambda v: torch.from_numpy(v.astype(np.float32) / 127.5 - 1)
    sheets = []
    for i in range(n):
        cols = ([torch.from_numpy(truth[i] * 2 - 1)] if truth is not None else []) + [to_t(v[i]) for v in vids]
        sheets.append(sheet(cols))
    return write_png(path, stack_sheets(sheets))


def write_report(store: str | Path, out: str | Path, *, reference: str = "dense", title: str = "Memory benchmark",
                 sheet_stories: int = 3, truth: np.ndarray | None = None) -> list[Path]:
    from mocbench.bench.store import atomic_write_text

    out = Path(out)
    df = load_rows(store)
    written = []
    md = out / "memory.md"
    atomic_write_text(md, to_markdown(df, reference, title))
    written.append(md)
    if not df[df["label"] != GT_LABEL].empty:
        written.append(recall_figure(df, out / "recall_vs_sparsity.png"))
        p = contact_sheet(df, sheet_stories, truth, out / "contact_sheet.png")
        if p is not None:
            written.append(p)
    return written
