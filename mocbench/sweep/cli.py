"""The parser of ``mocbench sweep CONFIG [key=value ...] [--launcher local|submitit] [--dry-run]`` (the command:
:mod:`mocbench.sweep.commands`)."""

from __future__ import annotations

from mocbench.config import add_config_arguments
from mocbench.sweep.launcher_config import LAUNCHERS


def add_subcommands(sub) -> None:
    p = sub.add_parser(
        "sweep", help="ablation sweep from config: grid/zip axes over any keys, staged resumable cells",
        description="Run a sweep (see configs/sweep/): a base cell config plus grid (cartesian) and zip (parallel) "
                    "axes over dotted keys, optionally per named ablation. Each cell runs its stages (train, "
                    "finetune, sample, eval, bench) and writes one row into OUT/results.csv; a re-run finishes "
                    "only what is missing. Cells are grouped into jobs (launcher.group_by) that run here "
                    "(--launcher local) or as submitit jobs on SLURM (--launcher submitit, resources from the "
                    "launcher: section). Example: mocbench sweep configs/sweep/ablation_cpu.yaml --dry-run",
    )
    add_config_arguments(p, "YAML sweep config",
                         overrides_help="key=value overrides of the sweep config (OmegaConf dotlist)")
    p.add_argument("--launcher", choices=LAUNCHERS, default="local",
                   help="local: on this machine (one process per GPU with several); submitit: each sweep job "
                        "(launcher.group_by) a submitit job (launcher.cluster: slurm, or local/debug to try it "
                        "out); needs mocbench[cluster]")
    p.add_argument("--no-wait", action="store_true",
                   help="with --launcher submitit: return once the jobs are submitted (re-run the command to "
                        "follow them, resubmit what did not finish and write the report)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the cells (analytic cost, done / to run / held by a queued job) and the jobs that "
                        "would run, with their resources; run nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: JSON ({cells, jobs}) instead of tables")
    p.add_argument("--retry-failed", action="store_true", help="re-run cells whose row says failed")
    p.add_argument("--reuse-foreign", action="store_true",
                   help="keep finished cells measured in another environment (code, device, torch or threads "
                        "differ) instead of running them again")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of the live display")
    p.add_argument("--no-report", action="store_true", help="do not write tables/figures at the end")
    p.add_argument("--strict", action="store_true", help="exit 1 if any cell failed or did not finish")
