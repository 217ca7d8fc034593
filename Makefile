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

.PHONY: install test test-slow demo lint format bench clean aot

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_FLAGS) -m "not slow" tests

# libtpu (the `tpu` extra) for the ahead-of-time TPU compilation (trajax.aot):
# the slow tests and `make aot` need it; no TPU is needed.
TPU_STAMP := $(VENV)/.installed-tpu

$(TPU_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[tpu]'
	touch $(TPU_STAMP)

test-slow: $(STAMP) $(TPU_STAMP)
	$(PY) -m pytest $(PYTEST_FLAGS) -m slow tests

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
