"""Tables and figures of ``mocbench memory`` from ``memory.csv`` alone (pure functions of the store).

- ``memory.md``: one line per row: training, sparsity, entity recall with its 95 % bootstrap
  interval, chance, (binding stories) the distractor rate, the difference to the reference row with
  a two-proportion z-test (story-clustered, :func:`mocbench.eval.recall.two_proportion_test`), scene
  recall, the held-out flow loss of shot 0 and of the scored shots, and, for MoC, the share of the
  scored shots' routed chunks that lie in the shots they recall. Nothing is bold: the intervals and
  p-values say what noise could explain.
- ``recall_vs_sparsity.png``: entity recall with intervals against sparsity, chance (and distractor
  rate) per row marked.
- ``contact_sheet.png``: the first stories, one row per shot; ground truth, then every row in table order.
- :func:`summary_lines`: the short version printed at the end of the command.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from mocbench.bench.store import atomic_write_text, load_table
from mocbench.eval.recall import per_story_recall, two_proportion_test
from mocbench.tasks.media import contact_sheet as sheet
from mocbench.tasks.media import stack_sheets, write_png

GT_LABEL = "ground truth"


def load_rows(store: str | Path) -> pd.DataFrame:
    df = load_table(store)
    df = df[df["status"] == "ok"].copy()
    if "order" in df:
        df = df.sort_values("order", key=lambda s: pd.to_numeric(s, errors="coerce"))
    return df.reset_index(drop=True)


def _per_story(row, kind: str) -> np.ndarray:
    return per_story_recall(row[f"{kind}_per_story"], row[f"{kind}_pairs_per_story"])


def with_tests(df: pd.DataFrame, reference: str = "dense") -> pd.DataFrame:
    """``df`` plus ``diff_vs_ref``, ``z_vs_ref``, ``p_vs_ref`` (entity recall) and ``scene_p_vs_ref``."""
    df = df.copy()
    ref = df[df["label"] == reference]
    for col in ("diff_vs_ref", "z_vs_ref", "p_vs_ref", "scene_p_vs_ref"):
        df[col] = math.nan
    if ref.empty:
        return df
    r = ref.iloc[0]
    ref_e, ref_s = _per_story(r, "entity"), _per_story(r, "scene")
    for i, row in df.iterrows():
        if row["label"] in (reference, GT_LABEL):
            continue
        e, s = _per_story(row, "entity"), _per_story(row, "scene")
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


def _has(df: pd.DataFrame, col: str) -> bool:
    return col in df and pd.to_numeric(df[col], errors="coerce").notna().any()


def to_markdown(df: pd.DataFrame, reference: str = "dense", title: str = "Memory benchmark") -> str:
    df = with_tests(df, reference)
    binding = _has(df, "distractor")
    head = ["row", "training", "sparsity", "entity recall [95% CI]", "chance",
            *(["distractor [95% CI]"] if binding else []), f"Δ vs {reference} (p)", "scene recall [95% CI]",
            "scene chance", "entity found", "loss shot 0 / scored shots", "MoC: routed to source shots (uniform)"]
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for _, r in df.iterrows():
        gt = r["label"] == GT_LABEL
        diff = "ref" if r["label"] == reference else "-" if gt else \
            f"{float(r['diff_vs_ref']):+.3f} ({_p(r['p_vs_ref'])})"
        label = r["label"] + (f" ({r['note']})" if str(r.get("note", "") or "") not in ("", "nan") and not gt else "")
        routed = _num(r.get("routed_to_source"), "{:.2f}")
        cells = [label, str(r.get("training", "-")), _num(r.get("sparsity"), "{:.1%}"),
                 f"{_num(r['entity_recall'])} [{_num(r['entity_lo'])}, {_num(r['entity_hi'])}]", _num(r["chance"]),
                 *([f"{_num(r['distractor'])} [{_num(r['distractor_lo'])}, {_num(r['distractor_hi'])}]"]
                   if binding else []),
                 diff, f"{_num(r['scene_recall'])} [{_num(r['scene_lo'])}, {_num(r['scene_hi'])}]",
                 _num(r["scene_chance"]), _num(r["entity_found"]),
                 "-" if gt else f"{_num(r.get('loss_shot0'), '{:.4f}')} / {_num(r.get('loss_later'), '{:.4f}')}",
                 routed + (f" ({_num(r.get('routed_to_source_uniform'), '{:.2f}')})" if routed != "-" else "")]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    stories = int(float(df["stories"].dropna().iloc[0])) if _has(df, "stories") else 0
    pairs = int(float(df["pairs"].dropna().iloc[0])) if _has(df, "pairs") else 0
    what = ("a later shot's dominant entity colour equals that of the shot that introduced the entity its caption "
            "names" if binding else "the dominant palette colour of a later shot equals shot 0's")
    notes = [
        (f"{stories} stories, {pairs} scored shots per row; every row samples the same stories with the same noise. "
         f"Recall: {what}, read from the generated frames alone (mocbench/eval/recall.py); a shot with no entity "
         "found is a miss; the mean over stories of each story's rate."),
        ("Chance: the same comparison against *other* stories (what drawing plausible colours with no memory "
         "scores). 95% intervals: percentile bootstrap over stories."),
        *([("Distractor: scored shots drawn in the colour of another (non-returning) entity's introduction shot: "
            "memory of the colours without the caption's binding.")] if binding else []),
        (f"Δ vs {reference}: difference in entity recall; p: two-sided two-proportion z-test with story-clustered "
         "standard errors (the scored shots of one story are not independent)."),
        ("training: trained = trained from scratch with this backend; finetuned = trained with this backend starting from "
         "another run's weights (init_from); swap = this backend put into other weights without training."),
        ("Sparsity: analytic (mocbench.estimate) on the task's layout. Loss: held-out flow loss (val split, fixed "
         "noise and t) of shot 0 and the mean of the scored shots. Routed to source shots: of the routed chunks "
         "chosen by queries of scored shots (all layers, heads, sampling steps), the share in shots a scored shot "
         "recalls (shot 0; in binding stories the introduction shots); in brackets the share if every query "
         "picked uniformly among its causal video candidates."),
    ]
    return "\n".join([*lines, "", *[f"<sub>{x}</sub>  " for x in notes]]) + "\n"


def summary_lines(df: pd.DataFrame, reference: str = "dense") -> list[str]:
    """A short plain-text summary for the terminal: one line per row (recall, interval, chance, test)."""
    df = with_tests(df, reference)
    binding = _has(df, "distractor")
    width = max([len(str(x)) for x in df["label"]] + [3])
    out = [f"{'row':<{width}}  {'training':<9}  {'sparsity':>8}  entity recall [95% CI]  chance"
           + ("  distract" if binding else "") + f"  vs {reference}"]
    for _, r in df.iterrows():
        gt, ref = r["label"] == GT_LABEL, r["label"] == reference
        test = "" if gt else "ref" if ref else f"{float(r['diff_vs_ref']):+.3f} (p {_p(r['p_vs_ref'])})"
        out.append(f"{r['label']:<{width}}  {r.get('training', '-')!s:<9}  {_num(r.get('sparsity'), '{:.1%}'):>8}  "
                   f"{_num(r['entity_recall'])} [{_num(r['entity_lo'])}, {_num(r['entity_hi'])}]   "
                   f"{_num(r['chance']):>6}" + (f"  {_num(r['distractor']):>9}" if binding else "") + f"  {test}")
    return out


def recall_figure(df: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = df[df["label"] != GT_LABEL]
    binding = _has(rows, "distractor")
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
        if binding:
            ax.plot([x], [float(r["distractor"])], "x", color="tab:red", ms=6)
    ax.plot([], [], color="grey", lw=2, label="chance (cross-story)")
    if binding:
        ax.plot([], [], "x", color="tab:red", label="distractor (another entity's colour)")
    ax.set_xlabel("attention sparsity (analytic)")
    ax.set_ylabel("entity colour recall (95% CI)")
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
