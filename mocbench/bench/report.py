"""``mocbench report``: result store(s) -> tables (Markdown, LaTeX, CSV), figures (PNG, PDF), env.

Layout of ``out_dir``::

    report.md                      every table + figure links + environment
    env.json                       the distinct environments the rows were measured in
    tables/{latency,latency_pivot,flops,scaling,status}.{md,tex,csv}   (stores with `mocbench bench` rows)
    tables/model.{md,tex,csv}                                         (stores with `mocbench bench-model` rows)
    figures/{latency_vs_shots,speedup_vs_sparsity}.{png,pdf}
    figures/{speedup_by_family,block_density_by_family}.{png,pdf}   (bench rows; the family is the backend)
    figures/fidelity_by_family.{png,pdf}                             (bench-model rows with per-layer fidelity)
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mocbench.bench import figures as figs
from mocbench.bench import tables
from mocbench.bench.store import atomic_write_text, load_table
from mocbench.errors import ConfigError, require_file

TABLES = {
    "latency_pivot": ("Total latency per layer in ms (speed-up vs {ref}) by shots and tokens", tables.latency_pivot),
    "latency": ("Latency (median and IQR, ms), speed-up vs {ref}, effective TFLOP/s", tables.latency_table),
    "flops": ("FLOPs per layer: measured vs analytic, and sparsity", tables.flops_table),
    "scaling": ("Scaling: log-log slope of total latency vs shots and vs tokens (1 = linear, 2 = quadratic)",
                tables.scaling_table),
    "model": (("Real video models (bench-model): full transformer forward per backend (median, IQR) and speed-up "
               "vs the model's own attention; full-depth figures are extrapolated from per-block cost, not measured"),
              tables.model_table),
    "status": ("Skipped and failed cells with their reasons", tables.status_table),
}
MODEL_ONLY = ("model",)  # tables of bench-model rows; every other table but status is of `mocbench bench` rows


# what the tables read (a CSV from elsewhere, or an old store without them, is refused naming them)
BENCH_COLUMNS = (*tables.CELL_COLUMNS, "status", "label", "total_ms", "total_flops", "est_total_flops", "dense_flops")


def build_tables(df: pd.DataFrame, reference: str = "dense") -> dict[str, pd.DataFrame]:
    """Every report table from the raw store DataFrame (pure); bench-model rows feed only the model table and
    the status table, and a table whose kind of row the store lacks is empty."""
    is_model = tables.is_model_row(df)
    full = tables.with_derived(df[~is_model], reference) if (~is_model).any() else None
    built = {}
    for name, (_, fn) in TABLES.items():
        if name == "status":
            built[name] = fn(df)
        elif name in MODEL_ONLY:
            built[name] = fn(df[is_model])
        else:
            built[name] = fn(full) if full is not None else pd.DataFrame()
    return built


def environments(df: pd.DataFrame) -> list[dict]:
    cols = [c for c in df.columns if c.startswith("env_")]
    if not cols:
        return []
    envs = df[cols + ["device"]].drop_duplicates()
    return [{k.removeprefix("env_"): v for k, v in row.items()} for row in envs.to_dict("records")]


def write_report(stores: str | Path | list, out_dir: str | Path | None = None, *, reference: str = "dense",
                 figures: bool = True) -> list[Path]:
    """Write every table, figure and the environment for ``stores`` into ``out_dir``; return the paths."""
    stores = [stores] if isinstance(stores, (str, Path)) else list(stores)
    for s in stores:
        require_file(s, "result store")
    out = Path(out_dir) if out_dir is not None else Path(stores[0]).parent
    df = load_table(stores)
    if df.empty:
        raise ValueError(f"result store {', '.join(map(str, stores))} has no rows")
    is_model = tables.is_model_row(df)
    missing = [c for c in BENCH_COLUMNS if c not in df.columns] if (~is_model).any() else []
    if missing:
        shown = ", ".join(map(repr, missing[:4])) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise ConfigError(f"result store {', '.join(map(str, stores))} has no column {shown}: not written by "
                          f"`mocbench bench` (eval stores: --table paper1/paper2; sweep stores: --table ablation)")
    written: list[Path] = []
    (out / "tables").mkdir(parents=True, exist_ok=True)
    built = build_tables(df, reference)
    full = tables.with_derived(df[~is_model], reference) if (~is_model).any() else None
    md_parts = [(f"# Benchmark report\n\nStores: {', '.join(f'`{s}`' for s in stores)}; "
                 f"{len(df)} cells ({', '.join(f'{n} {s}' for s, n in df['status'].value_counts().items())}); "
                f"speed-ups are vs `{reference}` on the same workload cell"
                 + (" (model rows: vs the model's own attention)" if is_model.any() else "") + ".\n")]
    model_cross = not built["model"].empty and built["model"]["speed-up"].str.endswith(tables.CROSS_ENV_MARK).any()
    if (full is not None and full["cross_env"].any()) or model_cross:
        md_parts.append(tables.CROSS_ENV_NOTE + "\n")
    has = {"model": bool(is_model.any()), "bench": full is not None}
    for name, table in built.items():
        if name != "status" and not has["model" if name in MODEL_ONLY else "bench"]:
            continue  # a table of a kind of row this store does not have
        caption = TABLES[name][0].format(ref=reference)
        base = out / "tables" / name
        for suffix, text in ((".md", tables.to_markdown(table)), (".tex", tables.to_latex(table, caption)),
                             (".csv", table.to_csv(index=False))):
            atomic_write_text(base.with_suffix(suffix), text)
            written.append(base.with_suffix(suffix))
        md_parts.append(f"## {caption}\n\n{tables.to_markdown(table)}")
    if figures:
        drawn = []
        if full is not None:
            drawn += [("latency_vs_shots", lambda: figs.latency_vs_shots(full)),
                      ("speedup_vs_sparsity", lambda: figs.speedup_vs_sparsity(full, reference)),
                      ("speedup_by_family", lambda: figs.speedup_by_family(full, reference)),
                      ("block_density_by_family", lambda: figs.block_density_by_family(full, reference))]
        if is_model.any():
            drawn.append(("fidelity_by_family", lambda: figs.fidelity_by_family(df[is_model])))
        if drawn:
            (out / "figures").mkdir(parents=True, exist_ok=True)
        for stem, draw in drawn:
            paths = figs.save(draw(), out / "figures", stem)
            written += paths
            if paths:
                md_parts.append(f"![{stem}](figures/{stem}.png)\n")
    envs = environments(df)
    atomic_write_text(out / "env.json", json.dumps(envs, indent=2) + "\n")
    written.append(out / "env.json")
    md_parts.append("## Environment\n\n" + tables.to_markdown(pd.DataFrame(envs)))
    atomic_write_text(out / "report.md", "\n".join(md_parts))
    written.append(out / "report.md")
    return written
