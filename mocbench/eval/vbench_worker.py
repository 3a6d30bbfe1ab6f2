"""Runs inside the separate VBench virtualenv (``make vbench-env``): evaluate one folder of clips.

Usage: ``python vbench_worker.py REQUEST.json``; the request holds ``videos``, ``output``, ``name``,
``dimensions`` and ``device``; ``VBENCH_CACHE_DIR`` / ``TORCH_HOME`` come from the environment.
Imports only the standard library, torch and vbench (mocbench is not installed in that env).
Prints one line ``MOCBENCH_VBENCH_RESULTS <path>`` naming VBench's ``{name}_eval_results.json``.

On a CPU-only torch the PyPI torchvision wheel is a CUDA build whose compiled ops fail to load
(``operator torchvision::nms does not exist`` at import); registering the schemas of the two ops
torchvision's Python code looks up at import time lets the rest of it (models, transforms) work.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

_KEEP = []  # torch.library.Library objects must stay alive


def patch_torchvision_ops() -> str:
    """Load torchvision's compiled ops, or register placeholder schemas when they cannot load."""
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return "torchvision not installed"
    libs = sorted(Path(spec.submodule_search_locations[0]).glob("_C*.so"))
    for lib in libs:
        try:
            torch.ops.load_library(str(lib))
            return f"loaded {lib.name}"
        except (OSError, RuntimeError):
            pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor")
    _KEEP.append(lib)
    return "registered torchvision::nms/qnms schemas (compiled ops unavailable)"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: vbench_worker.py REQUEST.json", file=sys.stderr)
        return 2
    req = json.loads(Path(argv[1]).read_text())
    print(f"torchvision: {patch_torchvision_ops()}", flush=True)
    import vbench
    from vbench import VBench

    full_info = os.path.join(os.path.dirname(vbench.__file__), "VBench_full_info.json")
    bench = VBench(req.get("device", "cpu"), full_info, req["output"])
    bench.evaluate(videos_path=req["videos"], name=req["name"], dimension_list=list(req["dimensions"]),
                   local=True, mode="custom_input")
    results = Path(req["output"]) / f"{req['name']}_eval_results.json"
    print(f"MOCBENCH_VBENCH_RESULTS {results}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
