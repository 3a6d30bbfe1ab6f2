"""``mocbench train`` and ``mocbench sample`` (their parsers: :mod:`mocbench.tasks.cli`)."""

from __future__ import annotations

import argparse

from mocbench.tasks.config import load_task_config
from mocbench.tasks.sample import sample_checkpoint
from mocbench.tasks.train import train


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_task_config(args.config, args.overrides)
    trainer, task, final = train(cfg)
    if not trainer.is_global_zero:  # DDP: the other ranks only train
        return 0
    print(f"trained {task.model.num_params():,} parameters for {trainer.global_step} steps "
          f"(backend {cfg.backend.name}); checkpoint: {final}")
    if args.sample:
        _, written = sample_checkpoint(str(final), f"{cfg.out_dir}/samples")
        print(f"wrote {len(written)} files under {cfg.out_dir}/samples (contact_sheet.png, metadata.json, mp4s)")
    else:
        print(f"sample with: mocbench sample {final} --num 4 --seed 0 --out {cfg.out_dir}/samples")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    _, written = sample_checkpoint(args.checkpoint, args.out, overrides=args.overrides, num=args.num, seed=args.seed,
                                   steps=args.steps, sampler=args.sampler, guidance=args.guidance)
    print(f"wrote {len(written)} files under {args.out}: contact_sheet.png, metadata.json, "
          f"{sum(p.suffix == '.mp4' for p in written)} mp4s")
    return 0
