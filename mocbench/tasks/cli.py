"""The parsers of ``mocbench train`` and ``mocbench sample`` (wired into :mod:`mocbench.cli` by
``add_subcommands``; the commands are in :mod:`mocbench.tasks.commands`)."""

from __future__ import annotations

from mocbench.config import add_config_arguments


def add_subcommands(sub) -> None:
    """Add ``train`` and ``sample`` to the ``mocbench`` argparse subparsers."""
    p = sub.add_parser(
        "train", help="train a single-/multi-shot video DiT (Lightning) with any attention backend",
        description="Train a video DiT on ShapeShots (or your clips) with the Lightning Trainer. Config: YAML + "
                    "key=value overrides, e.g. mocbench train configs/task/quickstart_multishot.yaml "
                    "backend.name=moc backend.params.top_k=2 trainer.max_steps=200 trainer.devices=2 "
                    "trainer.strategy=ddp. resume=last continues a run; init_from=CKPT starts from a checkpoint's weights.",
    )
    add_config_arguments(p, "YAML config (see configs/task/)")
    p.add_argument("--sample", action="store_true", help="sample the final checkpoint into OUT_DIR/samples")

    p = sub.add_parser(
        "sample", help="sample mp4s, contact sheets and metadata from a checkpoint (backend swappable)",
        description="Sample videos from a `mocbench train` checkpoint. backend.* overrides swap the attention "
                    "backend (e.g. a dense-trained model sampled with backend.name=moc backend.params.top_k=2); "
                    "sample.* overrides change sampling defaults. Same checkpoint + seed + backend -> same videos.",
    )
    p.add_argument("checkpoint", help="checkpoint (.ckpt) written by mocbench train")
    p.add_argument("overrides", nargs="*", help="backend.*/sample.* key=value overrides")
    p.add_argument("--num", type=int, default=None, help="number of videos (default: sample.num)")
    p.add_argument("--seed", type=int, default=None, help="seed of captions and noise (default: sample.seed)")
    p.add_argument("--out", default="samples", help="output directory (default: samples)")
    p.add_argument("--steps", type=int, default=None, help="ODE steps (default: sample.steps)")
    p.add_argument("--sampler", choices=("euler", "heun"), default=None, help="ODE solver (default: sample.sampler)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (1 = none)")
