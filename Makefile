# Every target sets itself up: a fresh clone needs only python3 (>= 3.10) and make.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= workdirs/demo
PYTEST_FLAGS ?= -q -n 2 --durations=15
# Tests and CLIs they start compile the same train steps many times over:
# share XLA executables across processes (kept out of git, see .gitignore).
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.cache/jax

.PHONY: install test test-slow demo docs lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_FLAGS) -m "not slow" tests

test-slow: $(STAMP)
	$(PY) -m pytest $(PYTEST_FLAGS) -m slow tests

demo: $(STAMP)
	$(PY) -m experiments.demo --workdir=$(DEMO_DIR)

# The API reference from the docstrings (Sphinx autodoc + napoleon), warnings as errors.
DOCS_BUILD ?= build/docs
docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -q -b html docs/api $(DOCS_BUILD)
	@echo "API reference: $(DOCS_BUILD)/index.html"

lint: $(STAMP)
	$(PY) -m ruff check trajax tests experiments configs bench
	$(PY) -m ruff format --check trajax tests experiments configs bench

format: $(STAMP)
	$(PY) -m ruff format trajax tests experiments configs bench
	$(PY) -m ruff check --fix trajax tests experiments configs bench

# CPU benchmarks behind docs/benchmarks.md (each prints its own table).
bench: $(STAMP)
	$(PY) -m bench.bench_averaging
	$(PY) -m bench.bench_theory --repeats 3
	$(PY) -m bench.bench_probes
	$(PY) -m bench.bench_sidetrip
	$(PY) -m bench.bench_data
	$(PY) -m bench.bench_train --mode=pipeline --workload=mnist1d

clean:
	rm -rf $(VENV) workdirs .pytest_cache
