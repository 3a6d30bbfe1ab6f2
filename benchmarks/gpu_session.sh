#!/usr/bin/env bash
# One GPU session in one command: CUDA correctness, the paper-scale headline cell and latency vs shots,
# about 8 minutes on one H100/H200-class GPU, everything written to one folder to commit
# (default results/gpu_<device>/, <device> from torch.cuda.get_device_name()).
#
#   bash benchmarks/gpu_session.sh [--out DIR] [--wheels DIR]   # on a CUDA machine, from the repository root
#   bash benchmarks/gpu_session.sh --rehearse [--out DIR]       # the same steps on CPU with tiny shapes (~1 min)
#
# The rehearsal runs every step, config and report on CPU (eager kernels, no long compiles; CUDA-only
# kernels give `skipped` rows with their reasons) so that no GPU minute is spent on a typo; the test suite
# runs it (tests/test_gpu_session.py).
#
# Steps (each under `timeout`, within an overall budget of 480 s; the result stores resume, so running the
# script again finishes what a limit cut, without re-measuring finished cells):
#   (a) <= 2 min  correctness: `pytest -m gpu` on tests/test_moc_varlen.py and tests/test_dense.py (impl varlen
#                 in bf16/fp16 x head_dim 64/128, forward and gradients; every dense kernel), then
#                 configs/bench/gpu_session_check.yaml (dense kernels, moc varlen and triton with per-token and
#                 tile routing, fwd+bwd, each cell validated against a float64 reference) -> check.csv;
#   (b) <= 4 min  configs/bench/gpu_session_headline.yaml -> headline.csv: the paper layout (180,736 tokens),
#                 bf16, head_dim 128, dense SDPA flash / cuDNN (flash-attn 4 if installed) vs moc varlen / triton
#                 / flex with per-token and tile routing, fwd and fwd+bwd, prepare timed apart, every cell timed
#                 interleaved with dense_flash; and, when FA3 is installed, the same cells again with FA3 behind
#                 torch's flash ops (torch.nn.attention.activate_flash_attention_impl("FA3")) -> headline_fa3.csv;
#   (c) the rest  configs/bench/gpu_session_scaling.yaml -> scaling.csv: forward latency vs shots 1-8.
# Output folder (flat, at most 7 files): env.json (GPU, driver, torch/CUDA/cuDNN/Triton versions, flash
# implementations, git SHA, each step's exit code and seconds, rows per status), session.log (everything
# printed, the pytest output included), check.csv, headline.csv, [headline_fa3.csv,] scaling.csv (result
# stores) and report.md (the tables of `mocbench report` for each store; `mocbench report DIR/headline.csv
# --out DIR2` makes the figures later). The exit status is 1 when a step failed (other than by its time
# limit) or a store holds a failed row (a validation error: its reason is printed last).
#
# What a CUDA machine needs:
#   * torch >= 2.11 built with CUDA (impl varlen calls torch's flash kernels: compute capability >= 8.0) and
#     the triton that comes with torch's CUDA wheels (impl triton, and flex's compile);
#   * the packages `mocbench bench` and `report` import: numpy, pandas (python-dateutil, pytz, tzdata),
#     omegaconf with antlr4-python3-runtime==4.9.3, pyyaml, rich (markdown-it-py, mdurl, pygments); pytest for
#     step (a). mocbench itself runs from this checkout (PYTHONPATH), it need not be installed;
#   * optional: flash-attn 4 (`flash_attn.cute`) for the dense_flash_attn4 rows; FA3 (`flash_attn_interface`,
#     built from flash-attention's hopper/ directory; Hopper GPUs only) for headline_fa3.csv.
# On a machine without internet, bring the missing ones as wheels: on a machine with pip and internet,
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d wheels/ omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 ...
# (--python-version: the CUDA machine's Python; name every package that is missing there), copy wheels/
# over, and pass `--wheels wheels/`: they are installed into a private directory put first on PYTHONPATH.
# PYTHON=/path/to/python selects the interpreter (default python3).
set -uo pipefail

REHEARSE=0
OUT_DIR=""
WHEELS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rehearse) REHEARSE=1 ;;
    --out) OUT_DIR="${2:?--out needs a directory}"; shift ;;
    --wheels) WHEELS="${2:?--wheels needs a directory of .whl files}"; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "gpu_session.sh: unknown argument '$1' (accepted: --rehearse, --out DIR, --wheels DIR)" >&2; exit 2 ;;
  esac
  shift
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT" || exit 2
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "$WHEELS" ]; then
  SITE="$(mktemp -d)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$WHEELS"/*.whl \
    || { echo "gpu_session.sh: installing the wheels in $WHEELS failed" >&2; exit 2; }
  export PYTHONPATH="$SITE:$PYTHONPATH"
fi

if [ "$REHEARSE" = 1 ]; then
  DEVICE="cpu"
  OUT_DIR="${OUT_DIR:-runs/gpu_rehearsal}"
else
  DEVICE="$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' \
    2>/dev/null)"
  if [ -z "$DEVICE" ]; then
    echo "gpu_session.sh: no CUDA device visible to $PY (torch without CUDA, or no GPU); run with --rehearse to" \
         "check the script on CPU" >&2
    exit 2
  fi
  SLUG="$(echo "$DEVICE" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '_' | sed 's/^_*//; s/_*$//')"
  OUT_DIR="${OUT_DIR:-results/gpu_$SLUG}"
fi
mkdir -p "$OUT_DIR" || exit 2
LOG="$OUT_DIR/session.log"
: > "$LOG"
BUDGET=480
STEPS=""

log() { echo "[gpu_session $(date -u +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$LOG"; }

# run NAME LIMIT CMD...: CMD under `timeout` (at most LIMIT seconds and what is left of the budget)
run() {
  local name="$1" limit="$2" left=$((BUDGET - SECONDS)) start=$SECONDS rc
  shift 2
  if [ "$left" -lt 10 ]; then
    log "$name: not run, the ${BUDGET}s budget is spent"
    STEPS="$STEPS $name=skipped:0"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  log "$name (limit ${limit}s): $*"
  timeout --kill-after=15 "$limit" "$@" >> "$LOG" 2>&1
  rc=$?
  [ "$rc" = 124 ] && log "$name: cut at ${limit}s (run the script again to finish its store)"
  log "$name: exit $rc after $((SECONDS - start))s"
  STEPS="$STEPS $name=$rc:$((SECONDS - start))"
}

# In a rehearsal every workload of a config gets tiny shapes on CPU, the timing loop is cut short, and impl
# flex runs as flex_eager (the same block mask, uncompiled: no per-shape compile on CPU).
overrides() {  # overrides CONFIG
  [ "$REHEARSE" = 1 ] || return 0
  local n i
  n="$("$PY" -c "import sys, yaml; print(len(yaml.safe_load(open(sys.argv[1]))['workloads']))" "$1")"
  for i in $("$PY" -c "import sys, yaml
for i, b in enumerate(yaml.safe_load(open(sys.argv[1]))['backends']):
    if (b.get('params') or {}).get('impl') == 'flex': print(i)" "$1"); do
    printf '%s\n' "backends.$i.params.impl=flex_eager"
  done
  for ((i = 0; i < n; i++)); do
    printf '%s\n' "workloads.$i.device=cpu" "workloads.$i.frames=[2]" "workloads.$i.tokens_per_frame=8" \
      "workloads.$i.text_tokens=4" "workloads.$i.heads=2"
  done
  printf '%s\n' timing.warmup=0 timing.repeats=1 timing.min_repeat_ms=0 timing.max_inner=1 timing.l2_flush=false
}

bench() {  # bench STEP CONFIG STORE LIMIT
  local args
  mapfile -t args < <(overrides "$2")
  run "$1" "$4" "$PY" -m mocbench.cli bench "$2" "${args[@]}" --out "$3" --no-progress
}

log "device: $DEVICE; output: $OUT_DIR; rehearse: $REHEARSE; python: $PY"

# (a) correctness, <= 2 min
run pytest_gpu 50 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_moc_varlen.py tests/test_dense.py
bench check configs/bench/gpu_session_check.yaml "$OUT_DIR/check.csv" 70

# (b) the headline cell, <= 4 min (+ FA3 behind torch's flash ops, when installed and time is left)
bench headline configs/bench/gpu_session_headline.yaml "$OUT_DIR/headline.csv" 240
FA3="$("$PY" -c 'import importlib.util as u, torch.nn.attention as a
print(int(u.find_spec("flash_attn_interface") is not None and hasattr(a, "activate_flash_attention_impl")))' \
  2>/dev/null || echo 0)"
if [ "$REHEARSE" = 0 ] && [ "$FA3" = 1 ]; then
  run headline_fa3 120 "$PY" -c 'import sys, torch.nn.attention as a; a.activate_flash_attention_impl("FA3")
from mocbench.cli import main; sys.exit(main(sys.argv[1:]))' bench configs/bench/gpu_session_headline.yaml \
    --out "$OUT_DIR/headline_fa3.csv" --no-progress
else
  log "headline_fa3: not run (needs a CUDA machine with flash_attn_interface importable and" \
      "torch.nn.attention.activate_flash_attention_impl; found: $FA3)"
fi

# (c) latency vs shots, with what is left
bench scaling configs/bench/gpu_session_scaling.yaml "$OUT_DIR/scaling.csv" 120

# the tables of every store in one report.md
STORES=()
for store in check headline headline_fa3 scaling; do
  [ -s "$OUT_DIR/$store.csv" ] && STORES+=("$OUT_DIR/$store.csv")
done
TMP_REPORT="$(mktemp -d)"
if [ "${#STORES[@]}" -gt 0 ] && "$PY" -m mocbench.cli report "${STORES[@]}" --out "$TMP_REPORT" \
    --reference dense_flash --no-figures --quiet >> "$LOG" 2>&1; then
  cp "$TMP_REPORT/report.md" "$OUT_DIR/report.md"
else
  log "report: no store to report, or mocbench report failed (see above)"
  STEPS="$STEPS report=1:0"
fi
rm -rf "$TMP_REPORT"
rm -f "$OUT_DIR"/*.csv.lock

# env.json: the environment, each step's exit code and seconds, rows per status; exit 1 on a failed step
# (not one cut by its time limit) or a failed row (a validation error is a finding: see its reason)
log "done in ${SECONDS}s"
STEPS="$STEPS" REHEARSE="$REHEARSE" "$PY" - "$OUT_DIR" <<'PYEOF' 2>&1 | tee -a "$LOG"
import csv, datetime, importlib.util, json, os, platform, subprocess, sys
from pathlib import Path

import torch

out = Path(sys.argv[1])


def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def version(module):
    if importlib.util.find_spec(module) is None:
        return ""
    try:
        return str(getattr(__import__(module), "__version__", "installed"))
    except Exception as exc:  # a package that is there but does not import is worth recording as such
        return f"import failed: {exc}"


env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "rehearse": os.environ["REHEARSE"] == "1", "python": platform.python_version(), "torch": torch.__version__,
       "cuda": torch.version.cuda or "", "git_sha": sh("git", "rev-parse", "HEAD") or os.environ.get("GIT_SHA", ""),
       "git_dirty": bool(sh("git", "status", "--porcelain", "--untracked-files=no"))}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    env.update(gpu=p.name, compute_capability=f"{p.major}.{p.minor}", gpu_memory_gib=round(p.total_memory / 2**30, 1),
               cudnn=torch.backends.cudnn.version(),
               driver=sh("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"))
for module in ("triton", "flash_attn", "flash_attn_interface", "xformers"):
    env[module] = version(module)
att = torch.nn.attention
env["flash_attention_impls"] = att.list_flash_attention_impls() if hasattr(att, "list_flash_attention_impls") else []
from mocbench.backends.moc.impls import IMPLS  # noqa: E402

env["moc_varlen_kernel"] = IMPLS["varlen"].label("cuda" if torch.cuda.is_available() else "cpu")
env["steps"] = {}
for step in os.environ["STEPS"].split():
    name, _, result = step.partition("=")
    rc, _, seconds = result.partition(":")
    env["steps"][name] = {"exit": rc, "seconds": int(seconds)}
env["rows"], failed = {}, []
for store in sorted(out.glob("*.csv")):
    with open(store, newline="") as f:
        rows = list(csv.DictReader(f))
    env["rows"][store.name] = {s: sum(r["status"] == s for r in rows) for s in sorted({r["status"] for r in rows})}
    failed += [f"{store.name}: {r['label']} {r['pass']} {r['workload']}: {r['reason'][:300]}" for r in rows
               if r["status"] == "failed"]
env["failed_rows"] = failed
(out / "env.json").write_text(json.dumps(env, indent=2) + "\n")
print("rows per store:", json.dumps(env["rows"]))
for line in failed:
    print("FAILED", line)
bad_steps = [n for n, s in env["steps"].items() if s["exit"] not in ("0", "124", "skipped")]
if bad_steps:
    print("steps that failed:", ", ".join(bad_steps))
sys.exit(1 if failed or bad_steps else 0)
PYEOF
