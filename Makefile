# Every target sets itself up: a fresh clone needs only python3 (>= 3.10) and make.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The exact versions the suite last passed with; `make lock` refreshes it.
LOCK := requirements/lock.txt
# Interpreters `make lock-check` resolves the lock on (default: every supported
# one this machine has, requirements/check_lock.py:find_pythons).
LOCK_PYTHONS ?=
DEMO_DIR ?= workdirs/demo
PYTEST_FLAGS ?= -q -n 2 --durations=15
# Tests and CLIs they start compile the same train steps many times over:
# share XLA executables across processes (kept out of git, see .gitignore).
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.cache/jax

.PHONY: install lock lock-check test test-slow demo docs lint format bench clean aot

install: $(STAMP)

# Installs the locked versions (pyproject.toml keeps compatible ranges for
# library users; the lock is what the tests ran with).
$(STAMP): pyproject.toml $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "trajax needs Python >= 3.11 (jax 0.10 does); got " + sys.version.split()[0] + ": make PYTHON=python3.11 ...")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(LOCK) -e '.[train,dev]'
	touch $(STAMP)

# Re-resolves pyproject.toml's ranges in a fresh venv and writes the result as
# the new lock (then run `make test` before committing it).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q -U setuptools wheel
	.lock-venv/bin/pip install -q '.[train,dev]'
	{ sed -n '1,3p' $(LOCK); .lock-venv/bin/pip freeze --all --exclude trajax-sgd --exclude pip; } > $(LOCK).new
	mv $(LOCK).new $(LOCK) && rm -rf .lock-venv

# The lock resolves, unchanged, on every supported Python this machine has.
lock-check:
	$(PYTHON) requirements/check_lock.py $(LOCK_PYTHONS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_FLAGS) -rs -m "not slow" tests

# libtpu (the `tpu` extra) for the ahead-of-time TPU compilation (trajax.aot):
# the slow tests and `make aot` need it; no TPU is needed.
TPU_STAMP := $(VENV)/.installed-tpu

$(TPU_STAMP): $(STAMP)
	$(PY) -m pip install -q -c $(LOCK) -e '.[tpu]'
	touch $(TPU_STAMP)

# The multi-process runs go last and alone: their in-process collectives give up
# after 40 s, which a 2-core machine busy with other tests can starve them past.
test-slow: $(STAMP) $(TPU_STAMP)
	$(PY) -m pytest $(PYTEST_FLAGS) -m slow tests --ignore=tests/test_multiprocess.py
	$(PY) -m pytest -q -p no:xdist --durations=5 -m slow tests/test_multiprocess.py

# The paper's configs compiled for three TPU pods on this host: per-chip memory,
# fit, XLA's estimated step time, images/s, MFU, 100k-step time (compiler
# estimates; docs/benchmarks.md, "Paper scale"). JSON reports in AOT_DIR.
AOT_TOPOLOGIES ?= v4:2x2x4 v5e:16x16 v5p:4x4x4
AOT_RUNS ?= imagenet_r34=--config=configs/imagenet_resnet34.py \
	imagenet_r34_cosine=--config=configs/imagenet_resnet34.py:cosine \
	cifar10_r34=--config=configs/cifar10_resnet34.py \
	cifar10_r18=--config=configs/cifar10_resnet34.py+--config.model.name=cifar_resnet18
AOT_DIR ?= workdirs/aot

aot: $(TPU_STAMP)
	@mkdir -p $(AOT_DIR)
	@$(PY) -c "from trajax.aot import TABLE_HEADER; print(TABLE_HEADER)"
	@for t in $(AOT_TOPOLOGIES); do for r in $(AOT_RUNS); do \
	  name=$${r%%=*}; o=$(AOT_DIR)/$$name-$$(echo $$t | tr : _); \
	  $(PY) -m trajax.aot --topology=$$t $$(echo "$${r#*=}" | tr + ' ') --label=$$name \
	    --noheader --noprint_json --out=$$o.json 2>$$o.log || { tail -3 $$o.log; exit 1; }; \
	done; done

demo: $(STAMP)
	$(PY) -m experiments.demo --workdir=$(DEMO_DIR)

# The API reference from the docstrings (Sphinx autodoc + napoleon), warnings as errors.
DOCS_BUILD ?= build/docs
docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -q -b html docs/api $(DOCS_BUILD)
	@echo "API reference: $(DOCS_BUILD)/index.html"

lint: $(STAMP)
	$(PY) -m ruff check trajax tests experiments configs bench requirements
	$(PY) -m ruff format --check trajax tests experiments configs bench requirements

format: $(STAMP)
	$(PY) -m ruff format trajax tests experiments configs bench
	$(PY) -m ruff check --fix trajax tests experiments configs bench

# CPU benchmarks behind docs/benchmarks.md (each prints its own table). The
# training rows are the engine's two input paths, each beside a hand-written
# loop: device-resident in-memory data (mnist1d), and host batches for a
# streamed (TFDS-shaped) source.
bench: $(STAMP)
	$(PY) -m bench.bench_averaging
	$(PY) -m bench.bench_theory --repeats 3
	$(PY) -m bench.bench_probes
	$(PY) -m bench.bench_sidetrip
	$(PY) -m bench.bench_data
	PYTHONPATH=. $(PY) -m bench.bench_engine_vs_hand --segments=15 --segment=200
	$(PY) -m bench.bench_train --mode=pipeline --workload=mnist1d --steps=1000 --warmup=20

clean:
	rm -rf $(VENV) workdirs .pytest_cache .lock-venv
