# DSA-reID — the front door.  `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed

# Stage variables (README, "Make targets")
DATASET    ?= synthetic
ROOT       ?= datasets
ESTIMATOR  ?= synthetic
PRESET     ?= small
RUN        ?= $(DATASET)-$(ESTIMATOR)-$(PRESET)
WORKERS    ?= 1
PRETRAINED ?= none
VARIANT    ?= dsa
SEED       ?= 0
ARGS       ?=

export PYTHONUNBUFFERED := 1

.PHONY: help install demo test test-all stats synth precompute inspect train eval export bench clean

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

# The environment: a virtual environment under the repo, reused when complete.
$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)  ## create/refresh the virtual environment (.venv)

test: $(STAMP)  ## run the fast test suite
	$(PY) -m pytest

test-all: $(STAMP)  ## run every test, slow ones too
	$(PY) -m pytest -m "not gpu"

stats: $(STAMP)  ## dataset statistics (DATASET, ROOT; ARGS=--json)
	$(PY) -m data stats --dataset $(DATASET) --root $(ROOT) $(ARGS)

synth: $(STAMP)  ## generate the synthetic dataset under ROOT (ARGS=--ids N --seed S ...)
	$(PY) -m data synth --root $(ROOT) $(ARGS)

precompute: $(STAMP)  ## DSAP store for DATASET with ESTIMATOR (WORKERS=N)
	$(PY) -m precompute run --dataset $(DATASET) --root $(ROOT) --estimator $(ESTIMATOR) --workers $(WORKERS) $(ARGS)

inspect: $(STAMP)  ## summarise/verify a DSAP store (ARGS=--verify --montage KEY ...)
	$(PY) -m precompute inspect --dataset $(DATASET) --root $(ROOT) --estimator $(ESTIMATOR) $(ARGS)

train: $(STAMP)  ## train (or resume) runs/RUN (DATASET, ESTIMATOR, PRESET, VARIANT, PRETRAINED, SEED)
	$(PY) -m train --dataset $(DATASET) --root $(ROOT) --estimator $(ESTIMATOR) --preset $(PRESET) \
	  --run $(RUN) --variant $(VARIANT) --pretrained $(PRETRAINED) --seed $(SEED) $(ARGS)

eval: $(STAMP)  ## evaluate runs/RUN on DATASET (MF-Stream only)
	$(PY) -m evaluate run --run $(RUN) --dataset $(DATASET) --root $(ROOT) $(ARGS)

export: $(STAMP)  ## export runs/RUN's inference model to ONNX
	$(PY) -m evaluate export --run $(RUN) $(ARGS)

bench: $(STAMP)  ## run the benchmarks in bench/ (results in bench/results/)
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b $(ARGS) || exit 1; done

demo: $(STAMP)  ## the whole pipeline on the synthetic default dataset
	$(PY) -m data synth --root $(ROOT)
	$(PY) -m data stats --dataset synthetic --root $(ROOT)

clean:  ## remove the virtual environment and caches (not datasets or runs)
	rm -rf $(VENV) *.egg-info .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
