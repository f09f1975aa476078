# Two commands set everything up on a fresh machine:
#   make demo   builds .venv on first use, then runs `batching-lab demo` on the bundled model
#   make test   builds .venv on first use, then runs the test suite (notebooks included)
# Torch: with no NVIDIA GPU visible we pin the CPU wheel first, so pip never pulls CUDA packages;
# with one, PyPI's default (CUDA) build is taken. Override with `make TORCH_SPEC=... venv`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.4" || echo "torch==2.13.0")

.PHONY: venv demo test lint bench gpu-check clean

$(BIN)/batching-lab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install "$(TORCH_SPEC)"
	$(BIN)/pip install -e ".[dev]"
	touch $@

venv: $(BIN)/batching-lab

demo: venv
	$(BIN)/batching-lab demo

test: venv
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check lab tests bench

bench: venv
	$(BIN)/python bench/engine.py

# on a machine with an NVIDIA GPU: the CUDA parity test, then the engine benchmark on a
# Qwen2.5-0.5B-shaped random model in bfloat16 (record the result in docs/benchmarks.md)
gpu-check: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_engine.py -k cuda -rs
	$(BIN)/python bench/engine.py --shape qwen2.5-0.5b --device cuda --dtype bfloat16 --out bench/results/engine_cuda.json

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
