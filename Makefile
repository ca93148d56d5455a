# Raw competition data -> trained models -> logits -> ensemble -> validated Kaggle submission.
# Every target is a real file (a stage's manifest), so make reruns only what is out of date.
# `make help` lists the targets; variables: COMPETITION MODEL RUN RUNS EPOCHS DEVICE CONFIG SOURCE LIMIT.
SHELL := /bin/bash
.DEFAULT_GOAL := help

BOOT_PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.requirements-installed

COMPETITION ?= cifar10
SOURCE ?=
KAGGLE ?=
LIMIT ?=
MODEL ?= resnet20
EPOCHS ?= 30
DEVICE ?= auto
CONFIG ?=
TRAIN_ARGS ?=
RUN ?= $(COMPETITION)-$(subst :,-,$(MODEL))
RUNS ?= $(RUN)
TTA ?= flip
CHECKPOINT ?= best
ENSEMBLE_ARGS ?=
SUBMIT_ARGS ?=
DATA_ROOT ?= data
RUNS_DIR ?= checkpoints
SUBMISSION ?= submissions/predictions.csv
NAME ?= sweep
GRID ?=
LAB ?=
SCALE ?= quick
LAB_ARGS ?=
LABS := $(basename $(notdir $(wildcard configs/labs/*.yaml)))
SHARED_BUNDLE ?= ../shared/competitions/cifar10-jpg/cifar10-jpg.zip

DATA_DIR := $(DATA_ROOT)/$(COMPETITION)
RUN_DIR := $(RUNS_DIR)/$(RUN)
# A stage's code is one of its inputs (as in DVC): editing it makes its outputs stale.
CORE_SRC := pipeline/artifacts.py pipeline/config.py pipeline/errors.py pipeline/registry.py
DATA_SRC := $(CORE_SRC) $(wildcard pipeline/data/*.py)
MODEL_SRC := $(CORE_SRC) $(wildcard pipeline/models/*.py) pipeline/checkpoint.py pipeline/runtime.py
TRAIN_SRC := $(MODEL_SRC) $(wildcard pipeline/train/*.py pipeline/augment/*.py) $(CONFIG)
PREDICT_SRC := $(MODEL_SRC) pipeline/predict.py pipeline/tta.py pipeline/run_outputs.py pipeline/data/dataset.py
ENSEMBLE_SRC := $(CORE_SRC) pipeline/ensemble.py pipeline/submission.py pipeline/run_outputs.py

# Parameters are inputs too: each stage's arguments live in a file rewritten only when they change.
PARAMS_DIR ?= .make
define params_file
$(shell mkdir -p $(PARAMS_DIR) && f=$(PARAMS_DIR)/$(1); printf '%s\n' '$(2)' | cmp -s - $$f 2>/dev/null || printf '%s\n' '$(2)' > $$f; echo $$f)
endef
DATA_ARGS := --competition $(COMPETITION) --data-root $(DATA_ROOT) $(if $(SOURCE),--source $(SOURCE)) $(if $(KAGGLE),--kaggle $(KAGGLE)) $(if $(LIMIT),--limit $(LIMIT))
TRAIN_CMD_ARGS := --data $(DATA_DIR) --model $(MODEL) --run $(RUN) --out-dir $(RUNS_DIR) --epochs $(EPOCHS) --device $(DEVICE) $(if $(CONFIG),--config $(CONFIG)) $(TRAIN_ARGS)
PREDICT_ARGS := --run $(RUN) --runs-dir $(RUNS_DIR) --tta $(TTA) --checkpoint $(CHECKPOINT) --device $(DEVICE)
DATA_PARAMS = $(call params_file,data-$(COMPETITION).args,$(DATA_ARGS))
TRAIN_PARAMS = $(call params_file,train-$(RUN).args,$(TRAIN_CMD_ARGS))
PREDICT_PARAMS = $(call params_file,predict-$(RUN).args,$(PREDICT_ARGS))

.PHONY: help venv data train predict ensemble submit validate report sweep lab demo smoke test bench bench-models bench-engine bench-data quality leaderboard info zoo clean-demo

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'
	@echo "  variables: COMPETITION=$(COMPETITION) MODEL=$(MODEL) RUN=$(RUN) EPOCHS=$(EPOCHS) DEVICE=$(DEVICE)"

venv: $(VENV_STAMP) ## Create .venv and install the pinned requirements

$(VENV_STAMP): requirements.txt
	$(BOOT_PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

data: $(DATA_DIR)/meta.json ## Prepare data/<competition>: raw/, arrays, meta.json, split (SOURCE=, KAGGLE=, LIMIT=)

$(DATA_DIR)/meta.json: $(VENV_STAMP) $(DATA_SRC) $(DATA_PARAMS)
	$(PY) -m pipeline data $(DATA_ARGS)

train: $(RUN_DIR)/manifest.json ## Train MODEL on COMPETITION into checkpoints/<run>

$(RUN_DIR)/manifest.json: $(DATA_DIR)/meta.json $(TRAIN_SRC) $(TRAIN_PARAMS)
	$(PY) -m pipeline train $(TRAIN_CMD_ARGS)

predict: $(RUN_DIR)/predict.json ## Val + test logits of RUN with TTA

$(RUN_DIR)/predict.json: $(RUN_DIR)/manifest.json $(PREDICT_SRC) $(PREDICT_PARAMS)
	$(PY) -m pipeline predict $(PREDICT_ARGS)

ensemble: $(SUBMISSION) ## Blend RUNS into submissions/predictions.csv

$(SUBMISSION): $(foreach r,$(RUNS),$(RUNS_DIR)/$(r)/predict.json) $(ENSEMBLE_SRC)
	$(PY) -m pipeline ensemble $(RUNS) --runs-dir $(RUNS_DIR) --out $@ $(ENSEMBLE_ARGS)

validate: $(SUBMISSION) ## Check predictions.csv against the sample submission
	$(PY) -m pipeline validate $(SUBMISSION) --data $(DATA_DIR)

submit: $(SUBMISSION) ## Validate and upload to Kaggle (SUBMIT_ARGS=--dry-run to rehearse)
	$(PY) -m pipeline submit $(SUBMISSION) $(SUBMIT_ARGS)

report: $(RUN_DIR)/manifest.json ## Self-contained HTML report of RUN (curves, confusion, t-SNE, ...)
	$(PY) -m pipeline report $(RUN) --runs-dir $(RUNS_DIR)

sweep: $(DATA_DIR)/meta.json ## Optuna sweep: NAME=lr-study CONFIG=configs/x.yaml GRID="--grid lr=0.1,0.01"
	$(PY) -m pipeline sweep --name $(NAME) $(if $(CONFIG),--base-config $(CONFIG)) --set data=$(DATA_DIR) $(GRID)

lab: $(VENV_STAMP) ## A course lab beside its report: LAB=ece661-simplenn SCALE=quick|full (LAB_ARGS=--list)
	@$(if $(LAB)$(filter --list,$(LAB_ARGS)),,echo "make lab: give LAB=<name> ($(LABS))" >&2; exit 2)
	$(PY) -m pipeline lab $(LAB) --scale $(SCALE) $(LAB_ARGS)

info: $(VENV_STAMP) ## Per-layer params/MACs of MODEL
	$(PY) -m pipeline info --model $(MODEL)

zoo: $(VENV_STAMP) ## Params/MACs of every registered model on 3x32x32 (the README table)
	$(PY) -m pipeline info --zoo

bench-models: $(VENV_STAMP) ## Forward+backward img/s of every model (batch 128)
	$(PY) bench/model_throughput.py

demo: $(VENV_STAMP) ## The whole chain offline on scikit-learn's digits, ending in a dry-run submit
	$(MAKE) --no-print-directory submit COMPETITION=digits MODEL=resnet20 EPOCHS=$(if $(filter command line,$(origin EPOCHS)),$(EPOCHS),15) \
		RUN=digits-resnet20 TTA=none SUBMISSION=submissions/digits-predictions.csv SUBMIT_ARGS=--dry-run

smoke: $(VENV_STAMP) ## The chain on a 1,000-image subset of the shared CIFAR-10 bundle
	@test -f $(SHARED_BUNDLE) || { echo "smoke: $(SHARED_BUNDLE) not found (the shared CIFAR-10 bundle)"; exit 1; }
	$(MAKE) --no-print-directory submit COMPETITION=cifar10-smoke SOURCE=$(SHARED_BUNDLE) LIMIT=1000 \
		MODEL=resnet20 EPOCHS=$(if $(filter command line,$(origin EPOCHS)),$(EPOCHS),3) RUN=cifar10-smoke-resnet20 \
		SUBMISSION=submissions/smoke-predictions.csv SUBMIT_ARGS=--dry-run

test: $(VENV_STAMP) ## Run the test suite
	$(PY) -m pytest -q

bench: $(VENV_STAMP) ## Training/inference img/s: naive torchvision loop vs this pipeline
	$(PY) bench/run.py

quality: $(VENV_STAMP) ## A recipe end to end on the shared CIFAR-10 bundle (CONFIG=configs/airbench94.yaml SEED= FINAL_FIT=1)
	@test -f $(SHARED_BUNDLE) || { echo "quality: $(SHARED_BUNDLE) not found (the shared CIFAR-10 bundle)"; exit 1; }
	$(PY) bench/quality.py --source $(SHARED_BUNDLE) --config $(or $(CONFIG),configs/resnet20-cpu-quality.yaml) \
		$(if $(SEED),--seed $(SEED)) $(if $(FINAL_FIT),--final-fit)

leaderboard: $(VENV_STAMP) ## The recipes that fit this machine + their greedy ensemble -> bench/results/leaderboard.md and README
	@test -f $(SHARED_BUNDLE) || { echo "leaderboard: $(SHARED_BUNDLE) not found (the shared CIFAR-10 bundle)"; exit 1; }
	$(PY) bench/leaderboard.py --source $(SHARED_BUNDLE) $(if $(SEEDS),--seeds $(SEEDS)) $(LEADERBOARD_ARGS)

bench-engine: $(VENV_STAMP) ## airbench94 steps through the engine vs a bare loop of the same maths (img/s ratio)
	$(PY) bench/engine_overhead.py

bench-data: $(VENV_STAMP) ## Data stage + predict/ensemble/validate at Kaggle scale (50k train + 300k test PNGs in 7z): time, peak RSS
	$(PY) bench/data_scale.py --json bench/results/data_scale.json $(BENCH_DATA_ARGS)

clean-demo: ## Remove the demo's data, run and submission
	rm -rf $(DATA_ROOT)/digits $(RUNS_DIR)/digits-resnet20 submissions/digits-predictions.* $(PARAMS_DIR)
