# Two entry points on a fresh machine: `make serve` and `make test` (both install what they need).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
TORCH_PIP_ARGS ?=  # e.g. --index-url https://download.pytorch.org/whl/cpu for the CPU build

.PHONY: setup serve test test-fast bench-gpu

setup:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	$(PIP) install -q -e ".[test]"

serve: setup
	RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 $(PYTHON) -m serve_app.cli serve

test: setup
	$(PYTHON) -m pytest -q

test-fast: setup
	$(PYTHON) -m pytest -q -m "not ray"

bench-gpu:
	$(PYTHON) benchmarks/bench_engine.py
