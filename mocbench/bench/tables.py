"""Report tables: pure functions from the result-store DataFrame to pandas tables, and
minimal Markdown / LaTeX writers for them (no measuring here).

* :func:`with_derived`   adds ``speedup`` (reference total / row total, same workload cell),
                         ``flops_ratio`` (measured / analytic total FLOPs) and ``cross_env`` (the row
                         and its reference were measured in different environments: marked ‡)
* :func:`latency_table`  long table: prepare / forward / total (median ± IQR), speed-up, TFLOP/s
* :func:`latency_pivot`  tokens/shots x backend: "total ms (speed-up)"
* :func:`flops_table`    measured vs analytic FLOPs and sparsity
* :func:`scaling_table`  log-log slope of total latency vs shots and vs tokens, per backend
* :func:`status_table`   skipped / failed cells with their reasons
* :func:`model_table`    ``mocbench bench-model`` rows (:func:`is_model_row`): full forward per backend,
                         speed-up vs the model's own attention, attention / routing time, sparsity,
                         per-layer fidelity, full-depth figures extrapolated from per-block cost
"""

from __future__ import annotations

import math

import pandas as pd

from mocbench.bench.env import COMPARABLE

CROSS_ENV_MARK = "‡"
CROSS_ENV_NOTE = (f"{CROSS_ENV_MARK} measured in another environment than the reference row of its cell (code, "
                  "device, torch or threads differ, e.g. kept with --reuse-foreign): not a side-by-side ratio")
# Columns that identify one workload cell: rows sharing them are comparable (speed-up).
CELL_COLUMNS = ["workload", "shots", "frames", "tokens_per_frame", "text_tokens", "text_placement", "tokens",
                "batch", "heads", "head_dim", "dtype", "device", "pass"]
# `mocbench bench-model`: the backend column of the row that times the model's own attention
MODEL_REFERENCE = "diffusers"


def with_derived(df: pd.DataFrame, reference: str = "dense") -> pd.DataFrame:
    """``df`` plus ``speedup`` vs the ``reference`` label's ok row of the same cell, and ``flops_ratio``."""
    df = df.copy()
    ok = df[(df["status"] == "ok") & (df["label"] == reference)]
    env_cols = [c for c in COMPARABLE if c in df.columns]
    ref = ok.drop_duplicates(CELL_COLUMNS, keep="last").set_index(CELL_COLUMNS)[["total_ms", *env_cols]]
    df = df.join(ref.rename(columns={"total_ms": "reference_ms", **{c: f"reference_{c}" for c in env_cols}}),
                 on=CELL_COLUMNS)
    df["cross_env"] = False
    for c in env_cols:
        df["cross_env"] |= df[f"reference_{c}"].notna() & (df[c] != df[f"reference_{c}"])
    df["speedup"] = df["reference_ms"] / df["total_ms"]
    if "paired_speedup" in df.columns:  # measured side by side in one run (timing.paired_reference): preferred
        df["speedup"] = df["paired_speedup"].where(df["paired_speedup"].notna(), df["speedup"])
    df["flops_ratio"] = df["total_flops"] / df["est_total_flops"]
    df["dense_over_total"] = df["dense_flops"] / df["total_flops"]
    return df


def _ok_sorted(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[df["status"] == "ok"]
    if "impl" not in ok.columns:  # stores written before the column existed
        ok = ok.assign(impl="")
    return ok.sort_values(["workload", "device", "dtype", "pass", "frames", "shots", "tokens", "label"], kind="stable")


def latency_table(df: pd.DataFrame) -> pd.DataFrame:
    ok = _ok_sorted(df)
    cols = {"workload": "workload", "device": "device", "dtype": "dtype", "pass": "pass", "shots": "shots",
            "tokens": "tokens", "label": "backend", "impl": "impl", "sparsity": "sparsity", "prepare_ms": "prepare ms",
            "prepare_iqr_ms": "prepare IQR", "forward_ms": "forward ms", "forward_iqr_ms": "forward IQR",
            "total_ms": "total ms", "total_iqr_ms": "total IQR", "speedup": "speed-up", "tflops": "TFLOP/s",
            "peak_mem_mb": "peak MiB"}
    return ok[list(cols)].rename(columns=cols).reset_index(drop=True)


def latency_pivot(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (workload, pass, shots, tokens), one column per backend: "ms (x speed-up)"; "paired"
    marks a speed-up measured side by side in the cell (``timing.paired_reference``), whose ms are the
    row's own while the ratio is the median of per-repeat ratios against the interleaved reference."""
    ok = _ok_sorted(df)
    if ok.empty:
        return pd.DataFrame()
    mark = ok["cross_env"] if "cross_env" in ok.columns else [False] * len(ok)
    paired = ok["paired_speedup"].notna() if "paired_speedup" in ok.columns else [False] * len(ok)
    text = ok.assign(cell=[(f"{ms:.3g} ({sp:.2f}x{' paired' if pair else ''})" if not math.isnan(sp) else f"{ms:.3g}")
                           + (f" {CROSS_ENV_MARK}" if cross else "")
                           for ms, sp, cross, pair in zip(ok["total_ms"], ok["speedup"], mark, paired)])
    index = ["workload", "device", "dtype", "pass", "shots", "tokens"]
    labels = list(dict.fromkeys(ok["label"]))
    pivot = text.pivot_table(index=index, columns="label", values="cell", aggfunc="last")
    pivot = pivot[[lab for lab in labels if lab in pivot.columns]].fillna("-")
    pivot.columns.name = None
    return pivot.reset_index()


def flops_table(df: pd.DataFrame) -> pd.DataFrame:
    ok = _ok_sorted(df)
    ok = ok[ok["pass"] == ok["pass"].iloc[0]] if not ok.empty else ok  # FLOPs do not depend on the pass
    cols = {"workload": "workload", "shots": "shots", "tokens": "tokens", "label": "backend",
            "num_chunks": "chunks", "sparsity": "sparsity the method asks for",
            "block_sparsity": "block sparsity a block-sparse kernel can use",
            "est_sparsity": "sparsity (analytic)",
            "attention_flops": "attn FLOPs", "routing_flops": "routing FLOPs", "total_flops": "total FLOPs",
            "est_total_flops": "total FLOPs (analytic)", "flops_ratio": "measured/analytic",
            "pooling_flops": "pooling FLOPs",
            "dense_over_total": "dense/total"}
    # 1 - block density on 128 x 128 blocks (moc-spec §10); empty for rows written before it was measured
    density = ok["block_density"] if "block_density" in ok.columns else pd.Series(math.nan, index=ok.index)
    ok = ok.assign(block_sparsity=1 - pd.to_numeric(density, errors="coerce"))
    return ok.drop_duplicates(["workload", "shots", "frames", "tokens", "label", "batch", "heads", "head_dim"])[
        list(cols)].rename(columns=cols).reset_index(drop=True)


def _loglog_slope(x, y) -> float:
    lx, ly = [math.log(float(a)) for a in x], [math.log(float(b)) for b in y]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    var = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / var if var > 0 else float("nan")


def scaling_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (workload, device, dtype, pass, backend) with >= 2 shot counts: least-squares slope of
    log(total ms) against log(shots) and against log(tokens). 1 is linear scaling, 2 quadratic
    (dense attention); the paper's claim is near-linear for MoC."""
    ok = _ok_sorted(df)
    rows = []
    for key, grp in ok.groupby(["workload", "device", "dtype", "pass", "label"], sort=False):
        grp = grp.drop_duplicates("shots", keep="last")
        if grp["shots"].nunique() < 2:
            continue
        rows.append({"workload": key[0], "device": key[1], "dtype": key[2], "pass": key[3], "backend": key[4],
                     "shots": "-".join(str(int(s)) for s in grp["shots"]),
                     "tokens": f"{int(grp['tokens'].min())}-{int(grp['tokens'].max())}",
                     "slope vs shots": _loglog_slope(grp["shots"], grp["total_ms"]),
                     "slope vs tokens": _loglog_slope(grp["tokens"], grp["total_ms"])})
    return pd.DataFrame(rows)


def status_table(df: pd.DataFrame) -> pd.DataFrame:
    """Skipped and failed cells grouped by backend and reason."""
    bad = df[df["status"] != "ok"]
    if bad.empty:
        return pd.DataFrame(columns=["backend", "status", "cells", "reason"])
    out = (bad.groupby(["label", "status", "reason"], sort=False).size().rename("cells").reset_index()
           .rename(columns={"label": "backend"}))
    return out[["backend", "status", "cells", "reason"]]


def is_model_row(df: pd.DataFrame) -> pd.Series:
    """Rows written by ``mocbench bench-model`` (they name the model class in ``model``)."""
    if "model" not in df.columns:
        return pd.Series(False, index=df.index)
    return df["model"].fillna("").astype(str).ne("")


def model_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per ok bench-model backend row: full forward ms (median, IQR), speed-up vs the model's own
    attention timed in the same run (the median and IQR of per-round ratios where the row has them, else the
    ratio of medians; ‡ when the two rows come from different environments), attention and
    routing ms per forward, sparsity, per-layer fidelity (worst rel-L2, lowest cosine vs dense attention),
    and full-depth forward ms and speed-up *extrapolated* from per-block cost (reduced-depth runs only)."""
    ok = df[is_model_row(df) & (df["status"] == "ok")]
    if ok.empty:
        return pd.DataFrame()
    ok = ok.assign(**{c: math.nan for c in _MODEL_NUMBERS if c not in ok.columns})
    env_cols = [c for c in COMPARABLE if c in ok.columns]
    own = ok[ok["backend"] == MODEL_REFERENCE].drop_duplicates("config_name", keep="last").set_index("config_name")
    layers = ok.groupby("config_name")["attention_layers"].max()
    rows = []
    for _, r in ok.iterrows():
        ref = own.loc[r["config_name"]] if r["config_name"] in own.index else None
        cross = ref is not None and any(str(r[c]) != str(ref[c]) for c in env_cols)
        speed = ref["model_ms"] / r["model_ms"] if ref is not None else math.nan
        paired = pd.notna(r["paired_speedup"]) and not cross
        speed = r["paired_speedup"] if paired else speed
        full_speed = ref["extrapolated_model_ms"] / r["extrapolated_model_ms"] if ref is not None else math.nan
        n, total = layers.get(r["config_name"], math.nan), r["full_depth_layers"]
        rows.append({
            "config": r["config_name"], "model": r["model"], "tokens": r["tokens"], "dtype": r["dtype"],
            "device": r["device"], "layers": f"{n:.0f} of {total:.0f}" if pd.notna(n) and pd.notna(total) else "-",
            "backend": r["label"], "sparsity": r["sparsity"], "forward ms": r["model_ms"], "IQR": r["model_iqr_ms"],
            "speed-up": (f"{speed:.2f}x" + (f" {CROSS_ENV_MARK}" if cross else "")) if pd.notna(speed) else "-",
            "speed-up IQR": r["paired_speedup_iqr"] if paired else math.nan,
            "attention ms": r["attention_ms"], "routing ms": r["routing_ms"],
            "fidelity rel-L2 (max)": r["fidelity_rel_l2_max"], "fidelity cos (min)": r["fidelity_cos_min"],
            "full-depth ms (extrapolated)": r["extrapolated_model_ms"],
            "full-depth speed-up (extrapolated)": f"{full_speed:.2f}x" if pd.notna(full_speed) else "-",
        })
    return pd.DataFrame(rows)


_MODEL_NUMBERS = ("sparsity", "model_ms", "model_iqr_ms", "attention_ms", "routing_ms", "attention_layers",
                  "full_depth_layers", "fidelity_rel_l2_max", "fidelity_cos_min", "extrapolated_model_ms",
                  "paired_speedup", "paired_speedup_iqr")


# ----------------------------------------------------------------------------- writers
def fmt(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.4g}"
    return str(value)


def to_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "_(no rows)_\n"
    head = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in table.columns) + " |"
    body = ["| " + " | ".join(fmt(v).replace("|", "\\|") for v in row) + " |"
            for row in table.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def to_latex(table: pd.DataFrame, caption: str = "") -> str:
    """A booktabs ``tabular`` (inside a ``table`` float when ``caption`` is given)."""
    if table.empty:
        return "% (no rows)\n"
    align = "".join("r" if pd.api.types.is_numeric_dtype(table[c]) else "l" for c in table.columns)
    lines = [rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(latex_escape(str(c)) for c in table.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(fmt(v)) for v in row) + r" \\" for row in table.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines = [r"\begin{table}[t]", r"\centering", r"\small", *lines, rf"\caption{{{latex_escape(caption)}}}",
                 r"\end{table}"]
    return "\n".join(lines) + "\n"
