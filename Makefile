# Two commands on a fresh machine: `make run` (the main job) and `make test` (the suite).
# Each creates .venv and installs what it needs. torch is installed first at an exact CPU
# version, so pip never resolves the package's `torch>=2.4` range to a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
RUN_ARGS ?=

.PHONY: run test test-matrix lint data browser clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[test,export,serve,tensorboard]'
	touch $@

# The real Fashion-MNIST from Debian's package, where apt-get exists; otherwise `resnets`
# looks in --data-dir, $$RESNETS_DATA or its cache, and downloads as a last resort.
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
		|| echo "note: could not install dataset-fashion-mnist; resnets will try its other sources"; \
	fi

# The chapter's experiment: d2l_resnet18 on Fashion-MNIST at 96x96, 5 epochs.
run: $(VENV)/.installed data
	$(VENV)/bin/resnets train $(RUN_ARGS)

# Debian's Chromium for the serve page's browser test, where apt-get exists; without it that
# one test is skipped, saying so.
browser:
	@if ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
		|| echo "note: could not install chromium; the browser test will be skipped"; \
	fi

# `data` lets the one test that uses the real files run too; without them it is skipped.
# Lint, type-check the library, check that its imports point one way (lint-imports: the
# contracts in pyproject.toml), then the suite with a coverage summary. The suite runs in one
# pytest-xdist process per core, each computing on one thread: many tests wait on a subprocess
# or a socket, and a second process keeps the cores busy meanwhile, while two threads in each
# would fight over the cores instead (BENCHMARKS.md, "The test suite's time"). A plain
# `pytest` runs it in one process on every core, as before.
test: $(VENV)/.installed data browser
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --cov --cov-report=term

# Every combination of tests/test_matrix.py: every network, size, batch, precision and layout
# (hundreds of short real runs; `make test` runs its cheap slice).
test-matrix: $(VENV)/.installed
	$(PY) -m pytest -q -m matrix tests/test_matrix.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
