"""``mocbench eval`` and ``mocbench paper`` (their parsers: :mod:`mocbench.eval.cli`)."""

from __future__ import annotations

import argparse

from mocbench.errors import check_output_file, require_int
from mocbench.eval.paper import load_paper_config, run_paper
from mocbench.eval.runner import EvalRequest, evaluate
from mocbench.eval.vbench_real import DIMENSIONS, VBenchSettings


def cmd_eval(args: argparse.Namespace) -> int:
    vb = VBenchSettings()
    for name in ("python", "cache_dir", "torch_home", "device"):
        if getattr(args, f"vbench_{name}"):
            setattr(vb, name, getattr(args, f"vbench_{name}"))
    dims = tuple(d for d in (args.vbench_dimensions or ",".join(DIMENSIONS)).split(",") if d)
    vb = VBenchSettings(**{**vb.__dict__, "dimensions": dims})
    if args.val_num is not None:
        require_int("--val-num", args.val_num)
    if args.store is not None:
        check_output_file(args.store, "--store")
    req = EvalRequest(args.samples, reference=args.reference,
                      evaluators=tuple(e for e in args.evaluators.split(",") if e), store=args.store,
                      config_name=args.name, force=args.force, reuse_foreign=args.reuse_foreign, vbench=vb,
                      val_num=args.val_num)
    store = evaluate(req)
    print(f"result store: {store.path} ({len(store)} rows); table: mocbench report {store.path} --table paper2")
    return 0


def cmd_paper(args: argparse.Namespace) -> int:
    cfg = load_paper_config(args.config, args.overrides)
    written = run_paper(cfg, scale=args.scale)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
