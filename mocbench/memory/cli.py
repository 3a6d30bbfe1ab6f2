"""The parser of ``mocbench memory CONFIG [key=value ...] [--out DIR]``, the memory benchmark (its command:
:mod:`mocbench.memory.commands`)."""

from __future__ import annotations

from mocbench.config import add_config_arguments


def add_subcommands(sub) -> None:
    p = sub.add_parser(
        "memory", help="memory benchmark: do sparse backends keep long-range memory? (recall vs sparsity, with tests)",
        description="Train dense and MoC (from scratch and fine-tuned from dense) on ShapeShots recall or binding "
                    "stories, sample every row of the config on the same stories and noise, and score colour recall "
                    "of the returning entity in later shots with bootstrap intervals, chance (binding: the "
                    "distractor rate) and a test against dense; training prints step, loss and ETA. Writes "
                    "OUT/memory.csv, memory.md, recall_vs_sparsity.png, contact_sheet.png; a re-run resumes. "
                    "Example: mocbench memory configs/memory/recall_cpu.yaml --out runs/memory_cpu",
    )
    add_config_arguments(p, "YAML memory config (see configs/memory/)")
    p.add_argument("--out", help="output directory (default: the config's output, else runs/NAME)")
    p.add_argument("--retry-failed", action="store_true", help="re-run rows whose row says failed")
    p.add_argument("--reuse-foreign", action="store_true",
                   help="keep rows measured in another environment instead of running them again")
