"""``mocbench bench-model`` and ``mocbench sample-model``: backends inside real diffusers video models."""

from __future__ import annotations

import argparse
import sys

from mocbench.config import add_config_arguments


def _console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200)  # tables stay readable in logs


def _needs_diffusers(command: str) -> bool:
    from mocbench.backend import dependency_problem

    missing = dependency_problem("diffusers")
    if missing:
        print(f"error: {command} needs diffusers ({missing}): pip install -e '.[diffusers]'", file=sys.stderr)
    return bool(missing)


def cmd_bench_model(args: argparse.Namespace) -> int:
    console = _console()
    if _needs_diffusers("bench-model"):
        return 2
    from mocbench.bench.resume import ResumePolicy
    from mocbench.integrations.diffusers.bench import load_bench_model_config, run_bench_model

    overrides = [*args.overrides, *([f"model.weights={args.weights}"] if args.weights is not None else [])]
    cfg = load_bench_model_config(args.config, overrides)
    out = args.out or cfg.output_path
    policy = ResumePolicy(retry_failed=args.retry_failed, retry_skipped=args.retry_skipped,
                          reuse_foreign=args.reuse_foreign)
    run_bench_model(cfg, out=out, policy=policy, log=lambda m: console.print(m, highlight=False, markup=False))
    _print_table(console, out, cfg.name)
    return 0


def _print_table(console, path: str, name: str) -> None:
    from rich.table import Table

    from mocbench.bench.store import load_table
    from mocbench.bench.tables import fmt, model_table, status_table

    df = load_table(path)
    df = df[df["config_name"] == name] if "config_name" in df.columns else df.iloc[:0]
    table = model_table(df)
    if not table.empty:
        first = table.iloc[0]
        shown = Table(title=f"{name}: {first['model']} ({first['dtype']}, {first['device']}), full transformer forward; "
                            f"speed-up vs the model's own attention ({path})")
        table = table.drop(columns=["config", "model", "dtype", "device"])
        for col in table.columns:
            shown.add_column(col, justify="left" if col == "backend" else "right")
        for row in table.itertuples(index=False):
            shown.add_row(*(fmt(v) for v in row))
        console.print(shown)
    bad = status_table(df)
    for row in bad.itertuples(index=False):
        console.print(f"{row.backend}: {row.status}: {row.reason}", highlight=False, markup=False)


def cmd_sample_model(args: argparse.Namespace) -> int:
    console = _console()
    if _needs_diffusers("sample-model"):
        return 2
    from mocbench.integrations.diffusers.sample import load_sample_model_config, sample_model

    cfg = load_sample_model_config(args.config, args.overrides)
    sample_model(cfg, args.weights, args.out, log=lambda m: console.print(m, highlight=False, markup=False))
    console.print(f"wrote {cfg.count} sample(s) and metadata.json to {args.out}; compare backends with: mocbench eval "
                  f"{args.out} --reference DENSE_SAMPLES --evaluators fidelity,vbench_proxy", highlight=False)
    return 0


def add_subcommands(sub) -> None:
    p = sub.add_parser(
        "bench-model", help="time backends inside a real diffusers video transformer (random or local weights)",
        description="Build a diffusers video transformer from an architecture config (configs/models/*.json; "
                    "random weights, nothing downloaded) or load it from --weights, validate every backend on a "
                    "shrunken input (each layer call against its own float64 reference; backends attending every "
                    "pair also against the model's own attention), time the full forward per backend against the "
                    "model's own attention, measure per-layer fidelity; one row per backend into the result store. "
                    "Needs the diffusers extra. Example: mocbench bench-model configs/models/cogvideox_cpu.yaml "
                    "model.num_layers=1",
    )
    add_config_arguments(p, "YAML bench-model config (see configs/models/)", optional=False)
    p.add_argument("--out", help="result store CSV (default: the config's output, else runs/NAME/results.csv)")
    p.add_argument("--weights", metavar="DIR", help="a local diffusers folder (pipeline with transformer/, or a "
                   "transformer folder) to load instead of random weights; never downloaded")
    p.add_argument("--retry-failed", action="store_true", help="re-measure backends whose row says failed")
    p.add_argument("--retry-skipped", action="store_true", help="re-measure backends whose row says skipped")
    p.add_argument("--reuse-foreign", action="store_true",
                   help="keep finished rows measured in another environment (code, device, torch or threads "
                        "differ) instead of re-measuring them; reports mark them")
    p.set_defaults(func=cmd_bench_model)

    p = sub.add_parser(
        "sample-model", help="sample a diffusers video pipeline from local weights with a chosen backend",
        description="Load a diffusers pipeline from a local folder (--weights; never downloaded), run the chosen "
                    "backend in its transformer(s) and write sample_XXX.mp4 + metadata.json in the layout "
                    "`mocbench eval` reads. Example: mocbench sample-model configs/models/sample_cogvideox.yaml "
                    "--weights ~/CogVideoX-5b --out runs/cogvideox/moc backend.name=moc backend.params.top_k=2 "
                    "backend.params.causal=false",
    )
    add_config_arguments(p, "YAML sample-model config (see configs/models/sample_*.yaml); optional")
    p.add_argument("--weights", metavar="DIR", required=True, help="local diffusers pipeline folder (model_index.json)")
    p.add_argument("--out", metavar="DIR", required=True, help="samples folder to write")
    p.set_defaults(func=cmd_sample_model)
