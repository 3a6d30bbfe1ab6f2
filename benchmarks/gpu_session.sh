#!/usr/bin/env bash
# One GPU session's validation and measurement, in one command (resumable): run it on a CUDA machine
# from the repository root. Nothing here has run on a GPU yet; every figure it writes is measured.
#
#   1. the CUDA tests: dense SDPA kernels, moc impls flex and triton (bf16/fp16, head_dim 64/128,
#      forward and gradients against float64 references), the pytest-benchmark smoke suite;
#   2. the paper-scale sweep configs/bench/h100_paper_scale.yaml (bf16, head_dim 128, 1-8 shots up to
#      180,736 tokens; dense SDPA auto/flash/cuDNN, flash-attn, xformers, fixed sparse, moc flex and
#      moc triton; fwd and fwd+bwd; every cell validated before it is timed) and its report, whose
#      tables give the issue-3 ratios (speed-up vs dense, prepare share, TFLOP/s, log-log slope).
#
# The sweep resumes from its store, so when a call's time limit cuts it, run the script again.
# Environment (GPU, driver, torch, triton, git SHA) goes to $OUT/env.txt.
#
# On this workplace's device machines (python3 has torch+cu130, triton, pandas, rich, ...), omegaconf
# is missing: carry it as wheels (see /work/.library/device/README.md), e.g. here:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 pyyaml
# and call:  GIT_SHA=$(git rev-parse HEAD) bash benchmarks/gpu_session.sh   with carry [".whl"].
set -uo pipefail
OUT="${OUT:-runs/gpu_session}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
{
  echo "git_sha: ${GIT_SHA:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

python3 -m pytest -q -p no:cacheprovider tests/test_dense.py tests/test_moc_flex.py tests/test_moc_triton.py tests/bench \
  2>&1 | tee "$OUT/gpu_tests.log" | tail -25

python3 -m mocbench.cli bench configs/bench/h100_paper_scale.yaml --no-progress --out "$OUT/h100/results.csv" \
  2>&1 | tail -40
python3 -m mocbench.cli report "$OUT/h100/results.csv" --out "$OUT/h100" > /dev/null && cat "$OUT/h100/report.md" | head -60
