"""``mocbench train`` and ``mocbench sample`` (wired into :mod:`mocbench.cli` by ``add_subcommands``)."""

from __future__ import annotations

import argparse

from mocbench.config import add_config_arguments


def cmd_train(args: argparse.Namespace) -> int:
    from mocbench.tasks.config import load_task_config
    from mocbench.tasks.train import train

    cfg = load_task_config(args.config, args.overrides)
    trainer, task, final = train(cfg)
    if not trainer.is_global_zero:  # DDP: the other ranks only train
        return 0
    print(f"trained {task.model.num_params():,} parameters for {trainer.global_step} steps "
          f"(backend {cfg.backend.name}); checkpoint: {final}")
    if args.sample:
        from mocbench.tasks.sample import sample_checkpoint

        _, written = sample_checkpoint(str(final), f"{cfg.out_dir}/samples")
        print(f"wrote {len(written)} files under {cfg.out_dir}/samples (contact_sheet.png, metadata.json, mp4s)")
    else:
        print(f"sample with: mocbench sample {final} --num 4 --seed 0 --out {cfg.out_dir}/samples")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from mocbench.tasks.sample import sample_checkpoint

    _, written = sample_checkpoint(args.checkpoint, args.out, overrides=args.overrides, num=args.num, seed=args.seed,
                                   steps=args.steps, sampler=args.sampler, guidance=args.guidance)
    print(f"wrote {len(written)} files under {args.out}: contact_sheet.png, metadata.json, "
          f"{sum(p.suffix == '.mp4' for p in written)} mp4s")
    return 0


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
    p.set_defaults(func=cmd_train)

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
    p.set_defaults(func=cmd_sample)
