# Two entry points on a fresh machine: `make demo` (set up + main job), `make test` (set up + tests).
# Both create .venv in the repo root. torch is installed pinned *first*, so nothing that depends on
# torch pulls a different (multi-GB CUDA) build. GPU users: make test TORCH_SPEC="torch==2.11.0".
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mocbench-installed

.PHONY: install demo test bench-smoke clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mocbench backends
	$(VENV)/bin/mocbench plan configs/plan/paper_multishot.yaml
	@# the headline cell, measured afresh into runs/ (git-ignored): 32k tokens, dense vs MoC side by side
	$(VENV)/bin/mocbench bench configs/bench/demo_32k.yaml --out runs/demo/results.csv
	$(VENV)/bin/mocbench report runs/demo/results.csv --out runs/demo --quiet

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# The real VBench in its own virtualenv (vbench 0.1.5 pins numpy<2, transformers==4.33.2, ...), used by
# `mocbench eval --evaluators vbench` through a subprocess. torch is installed first and pinned by a
# constraints file, so torchvision/timm cannot pull a multi-GB CUDA torch. About 2-4 min, ~1.5 GB.
# Weights are not downloaded: put them under $VBENCH_CACHE_DIR (see mocbench/eval/vbench_real.py).
VBENCH_VENV ?= .venv-vbench
.PHONY: vbench-env
vbench-env: $(VBENCH_VENV)/.vbench-installed

$(VBENCH_VENV)/.vbench-installed:
	$(PYTHON) -m venv $(VBENCH_VENV)
	echo "$(TORCH_SPEC)" > $(VBENCH_VENV)/constraints.txt
	$(VBENCH_VENV)/bin/python -m pip install -q $(TORCH_SPEC)
	$(VBENCH_VENV)/bin/python -m pip install -q -c $(VBENCH_VENV)/constraints.txt vbench==0.1.5 decord==0.6.0
	touch $@
