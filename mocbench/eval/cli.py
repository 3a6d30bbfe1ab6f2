"""The parsers of ``mocbench eval`` and ``mocbench paper`` (wired into :mod:`mocbench.cli` by ``add_subcommands``;
their commands: :mod:`mocbench.eval.commands`)."""

from __future__ import annotations

from mocbench.config import add_config_arguments
from mocbench.eval.names import EVALUATORS


def add_subcommands(sub) -> None:
    """Add ``eval`` and ``paper`` to the ``mocbench`` argparse subparsers."""
    p = sub.add_parser(
        "eval", help="quality of sampled videos: fidelity to dense, val loss, VBench (real/proxy), memory, cost",
        description="Evaluate a folder written by `mocbench sample` and add one row per evaluator to a result store "
                    "(CSV; re-runs skip finished rows). Example: mocbench eval runs/x/moc --reference runs/x/dense "
                    "--evaluators fidelity,vbench_proxy,memory --store runs/x/eval.csv. Proxies are weight-free "
                    "approximations of VBench dimensions and are marked as such (proxy=1, a dagger in tables).",
    )
    p.add_argument("samples", help="samples folder (metadata.json + sample_XXX.mp4)")
    p.add_argument("--reference", help="dense samples folder from the same checkpoint, captions and seeds (fidelity)")
    p.add_argument("--evaluators", default=",".join(EVALUATORS),
                   help=f"comma-separated subset of {','.join(EVALUATORS)} (default: all)")
    p.add_argument("--store", help="result store CSV (default: SAMPLES/../eval.csv)")
    p.add_argument("--name", default="", help="config name written into every row")
    p.add_argument("--force", action="store_true", help="re-evaluate rows that are already in the store")
    p.add_argument("--reuse-foreign", action="store_true",
                   help="keep rows evaluated in another environment (code, torch or threads differ) instead of "
                        "evaluating again")
    p.add_argument("--val-num", type=int, default=None, help="held-out videos for val_loss (default: data.val_size)")
    p.add_argument("--vbench-python", help="interpreter of the VBench env (default .venv-vbench/bin/python, "
                                           "or $MOCBENCH_VBENCH_PYTHON)")
    p.add_argument("--vbench-cache-dir", help="VBench weights (VBENCH_CACHE_DIR layout; default ~/.cache/vbench)")
    p.add_argument("--vbench-torch-home", help="torch hub cache holding DINO's checkpoint (default $TORCH_HOME)")
    p.add_argument("--vbench-device", help="device VBench runs on (default cpu)")
    p.add_argument("--vbench-dimensions", help="comma-separated VBench dimensions (default: the six of the paper "
                                               "tables + temporal_flickering)")

    p = sub.add_parser(
        "paper", help="regenerate a paper-style table end to end (train/load, sample every backend, eval, report)",
        description="Run a configs/paper/*.yaml: train (or load) a checkpoint, sample every listed backend with "
                    "identical captions and seeds, evaluate, and write the paper table. Example: mocbench paper "
                    "configs/paper/table2_multi_shot.yaml --scale cpu",
    )
    add_config_arguments(p, "YAML config (see configs/paper/)", optional=False)
    p.add_argument("--scale", default=None, help="which scale of the config to run (default: the config's scale)")
