"""Committed per-device baselines of the pytest-benchmark suite (tests/bench), and the check against them.

    python benchmarks/baselines/baseline.py compare bench.json     # exit 1 if a median regressed > 15 %
    python benchmarks/baselines/baseline.py update bench.json      # write benchmarks/baselines/<device>.json

``bench.json`` is ``pytest tests/bench --benchmark-enable --benchmark-json=bench.json``; tests/conftest.py
adds the device (GPU model, else CPU model), torch and CUDA to its ``machine_info``. The baseline of a device
is ``<slug of its name>.json`` here: per benchmark its median, IQR and rounds, plus the torch and CUDA it was
measured with. ``compare`` refuses a baseline of another torch or CUDA (timings move with them: measure and
update on purpose), lists benchmarks that are new or gone, and fails on a median more than ``--threshold``
slower. With no baseline for the device it says how to create one and exits 0. See README.md here.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def slug(device: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3`` (the baseline's file name)."""
    s = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    if not s:
        raise ValueError(f"device name {device!r} has no letters or digits")
    return s


def read_run(path: str | os.PathLike) -> dict:
    """A pytest-benchmark JSON run as {device, torch, cuda, git, benchmarks: {fullname: stats}}."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"error: {path}: not a readable pytest-benchmark JSON file ({exc})") from None
    info = data.get("machine_info", {}).get("mocbench")
    if not info:
        raise SystemExit(f"error: {path}: machine_info has no 'mocbench' entry (device, torch); run the suite "
                         "from the repository root so tests/conftest.py records them")
    benches = {}
    for b in data.get("benchmarks", []):
        st = b["stats"]
        benches[b["fullname"]] = {"median_s": st["median"], "iqr_s": st["iqr"], "rounds": st["rounds"]}
    if not benches:
        raise SystemExit(f"error: {path}: no benchmarks (was the suite run with --benchmark-enable?)")
    return {"device": info["device"], "torch": info["torch"], "cuda": info["cuda"],
            "git": data.get("commit_info", {}).get("id", ""), "benchmarks": benches}


def baseline_path(device: str, directory: Path = HERE) -> Path:
    return directory / f"{slug(device)}.json"


def update(run: dict, directory: Path = HERE) -> Path:
    path = baseline_path(run["device"], directory)
    directory.mkdir(parents=True, exist_ok=True)
    doc = {"device": run["device"], "torch": run["torch"], "cuda": run["cuda"], "measured_at_commit": run["git"],
           "updated": _dt.date.today().isoformat(), "benchmarks": dict(sorted(run["benchmarks"].items()))}
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def compare(run: dict, baseline: dict, threshold: float) -> tuple[bool, list[str]]:
    """(passed, report lines) of ``run`` against ``baseline`` (both as :func:`read_run` / the file give)."""
    for key in ("torch", "cuda"):
        if baseline[key] != run[key]:
            why = (f"baseline for {baseline['device']} was measured with {key} {baseline[key]!r}, this run has "
                   f"{run[key]!r}: timings are not comparable; check the numbers and update the baseline on "
                   "purpose (benchmarks/baselines/README.md)")
            return False, [why]
    lines, worst = [], []
    base, now = baseline["benchmarks"], run["benchmarks"]
    for name in sorted(set(base) | set(now)):
        if name not in now:
            lines.append(f"gone       {name} (in the baseline, not in this run: skipped or removed?)")
        elif name not in base:
            lines.append(f"new        {name} {now[name]['median_s'] * 1e3:.4g} ms (not in the baseline)")
        else:
            change = now[name]["median_s"] / base[name]["median_s"] - 1
            bad = change > threshold
            worst += [name] if bad else []
            lines.append(f"{'REGRESSED' if bad else 'ok':<10} {name} {base[name]['median_s'] * 1e3:.4g} -> "
                         f"{now[name]['median_s'] * 1e3:.4g} ms ({change:+.1%})")
    lines.append(f"{len(worst)} of {len(set(base) & set(now))} medians more than {threshold:.0%} slower than the "
                 f"baseline of {baseline['device']} (commit {baseline.get('measured_at_commit', '?')[:12]}, "
                 f"{baseline.get('updated', '?')})")
    return not worst, lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=("compare", "update"))
    ap.add_argument("bench_json", help="pytest --benchmark-json output")
    ap.add_argument("--dir", type=Path, default=HERE, help="baselines folder (default: this script's)")
    ap.add_argument("--threshold", type=float, default=0.15, help="allowed median slow-down (default 0.15)")
    args = ap.parse_args(argv)
    if not args.threshold > 0:
        ap.error(f"--threshold must be > 0, got {args.threshold}")
    run = read_run(args.bench_json)
    if args.command == "update":
        path = update(run, args.dir)
        print(f"wrote {path} ({len(run['benchmarks'])} benchmarks, {run['device']}, torch {run['torch']}); "
              "commit it to make it the baseline")
        return 0
    path = baseline_path(run["device"], args.dir)
    if not path.is_file():
        print(f"no committed baseline for {run['device']} ({path}): nothing compared. To create it: python "
              f"benchmarks/baselines/baseline.py update {args.bench_json}, then commit {path.name}")
        return 0
    passed, lines = compare(run, json.loads(path.read_text()), args.threshold)
    print("\n".join(lines))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
