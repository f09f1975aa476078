# Two commands set everything up on a fresh machine:
#   make demo   builds .venv on first use, then runs `batching-lab demo` on the bundled model
#   make test   builds .venv on first use, then runs the test suite (notebooks included)
# Torch: PyPI's Linux wheel is the CUDA build (several GB of nvidia-* packages). With no NVIDIA GPU
# visible we install the CPU wheel (torch==2.13.0+cpu from PyTorch's CPU index) first, so pip never
# pulls CUDA packages; macOS wheels on PyPI are CPU-only already; with `nvidia-smi` present PyPI's
# default (CUDA) build is taken. Override with `make TORCH_SPEC=... TORCH_INDEX=... venv`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HAS_GPU    := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)
ifeq ($(HAS_GPU),yes)
TORCH_SPEC  ?= torch>=2.4
TORCH_INDEX ?=
else ifeq ($(shell uname -s),Darwin)
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
else
TORCH_SPEC  ?= torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
endif
# --retries 1: where that index is unreachable (offline machines with a local wheel mirror) pip
# falls back to the mirror in seconds instead of retrying each package for a minute
TORCH_PIP_ARGS := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX) --retries 1)

.PHONY: venv demo test lint bench gpu-check clean

$(BIN)/batching-lab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/pip install -e ".[dev]"
	touch $@

venv: $(BIN)/batching-lab

demo: venv
	$(BIN)/batching-lab demo

test: venv
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check lab tests bench scripts

bench: venv
	$(BIN)/python bench/engine.py

# on a machine with an NVIDIA GPU: the CUDA tests, then the engine benchmark and the decode-step
# timings on a Qwen2.5-0.5B-shaped random model in bfloat16, eager and with CUDA graphs
# (bench/results/engine_cuda*.json, engine_steps_cuda*.json; record the results in docs/benchmarks.md)
gpu-check: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider -m gpu tests/test_engine.py tests/test_engine_cuda.py tests/test_cuda_graph_padding.py -rs
	$(BIN)/python bench/engine.py --shape qwen2.5-0.5b --device cuda --dtype bfloat16 --warmup-rounds 1 --repeat 3 --out bench/results/engine_cuda.json
	$(BIN)/python bench/engine_steps.py --shape qwen2.5-0.5b --device cuda --dtype bfloat16 --rows 1 4 16 64 --out bench/results/engine_steps_cuda.json
	$(BIN)/python bench/engine.py --shape qwen2.5-0.5b --device cuda --dtype bfloat16 --cuda-graphs --warmup-rounds 1 --repeat 3 --skip hf-continuous --out bench/results/engine_cuda_graphs.json
	$(BIN)/python bench/engine_steps.py --shape qwen2.5-0.5b --device cuda --dtype bfloat16 --cuda-graphs --rows 1 4 16 64 --out bench/results/engine_steps_cuda_graphs.json

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
