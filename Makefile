# Raw competition data -> trained models -> logits -> ensemble -> validated Kaggle submission.
# Every target is a real file (a stage's manifest), so make reruns only what is out of date.
# `make help` lists the targets; variables: COMPETITION MODEL RUN RUNS EPOCHS BUDGET DEVICE CONFIG SOURCE LIMIT.
SHELL := /bin/bash
.DEFAULT_GOAL := help

BOOT_PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.requirements-installed

# Saved choices: `make use COMPETITION=... SOURCE=...` writes them to LOCAL_MK (git-ignored), read by
# every later call; a variable given on the command line still wins.
LOCAL_MK ?= local.mk
SAVABLE := COMPETITION SOURCE KAGGLE LIMIT MODEL EPOCHS BUDGET DEVICE CONFIG TRAIN_ARGS RUN RUNS TTA CHECKPOINT \
	ENSEMBLE_ARGS SUBMIT_ARGS SUBMISSION
-include $(LOCAL_MK)
FROM_LOCAL_MK := $(foreach v,$(SAVABLE),$(if $(filter file,$(origin $(v))),$(v)))

COMPETITION ?= cifar10
# Stage arguments with no default here (SOURCE KAGGLE LIMIT MODEL EPOCHS DEVICE CONFIG TRAIN_ARGS TTA
# CHECKPOINT RUNS ENSEMBLE_ARGS): a stage gets a flag only for what was given, so a CONFIG's values and
# each stage's own defaults hold otherwise.
# BUDGET without MODEL or CONFIG: `--recipe auto` picks the recipe and epochs for the budget from the
# leaderboard records (results/leaderboard/), so the run is <competition>-auto.
AUTO_RECIPE = $(if $(BUDGET),$(if $(MODEL)$(CONFIG),,1))
MODEL_NAME = $(or $(MODEL),$(if $(CONFIG),$(shell sed -n 's/^model:[[:space:]]*\([^[:space:]#]*\).*/\1/p' $(CONFIG) 2>/dev/null | head -n 1)),$(if $(AUTO_RECIPE),auto),resnet20)
RUN ?= $(COMPETITION)-$(subst :,-,$(MODEL_NAME))
SUBMIT_ARGS ?=
DATA_ROOT ?= data
RUNS_DIR ?= checkpoints
SUBMISSION ?= submissions/predictions.csv
NAME ?= sweep
GRID ?=
LAB ?=
SCALE ?= quick
LAB_ARGS ?=
JOBS ?=
LABS := $(basename $(notdir $(wildcard configs/labs/*.yaml)))
SHARED_BUNDLE ?= ../shared/competitions/cifar10-jpg/cifar10-jpg.zip
PARAMS_DIR ?= .make

DATA_DIR := $(DATA_ROOT)/$(COMPETITION)
RUN_DIR := $(RUNS_DIR)/$(RUN)
# A stage's code is one of its inputs (as in DVC): editing it makes its outputs stale. Each list names
# every module `python -m pipeline <stage>` may import (lazy imports too); tests/test_make_deps.py walks
# the imports from the stage's command and fails when a list misses one, so they cannot drift.
CORE_SRC := pipeline/__init__.py pipeline/__main__.py pipeline/cli.py pipeline/console.py pipeline/artifacts.py \
	pipeline/config.py pipeline/cli_config.py pipeline/errors.py pipeline/registry.py pipeline/run_layout.py
DATASET_SRC := pipeline/data/__init__.py pipeline/data/dataset.py
DATA_SRC := $(CORE_SRC) $(wildcard pipeline/data/*.py) pipeline/flips.py pipeline/kaggle_api.py
MODEL_SRC := $(CORE_SRC) $(wildcard pipeline/models/*.py) pipeline/checkpoint.py pipeline/runtime.py pipeline/machine.py
LOADER_SRC := $(DATASET_SRC) $(wildcard pipeline/augment/*.py) pipeline/flips.py
TRAIN_SRC = $(MODEL_SRC) $(LOADER_SRC) $(wildcard pipeline/train/*.py) pipeline/hints.py pipeline/plots.py \
	pipeline/records.py $(filter %.yaml %.yml,$(TRAIN_OPTS)) $(AUTO_INPUTS)
# --recipe auto's choice is made from the leaderboard records and the recipes' configs: both are inputs
AUTO_INPUTS = $(if $(findstring --recipe auto,$(TRAIN_OPTS)),$(wildcard results/leaderboard/*/*.json) $(wildcard configs/*.yaml))
PREDICT_SRC := $(MODEL_SRC) $(LOADER_SRC) pipeline/predict.py pipeline/tta.py
ENSEMBLE_SRC := $(CORE_SRC) $(DATASET_SRC) pipeline/ensemble.py pipeline/submission.py

# Parameters are inputs too. A stage's recipe saves the arguments it ran with in PARAMS_DIR/<stage>.args
# once it succeeds (never while make reads this file, so `make -n` and failed calls change nothing).
# A call that gives none of a stage's variables reuses the saved ones: a later target takes an
# earlier stage as it is on disk instead of rebuilding it from today's defaults. A call whose
# arguments differ from the saved ones makes the stage stale (FORCE).
given = $(strip $(foreach v,$(1),$(if $(filter command line environment override,$(origin $(v)))$(filter $(v),$(FROM_LOCAL_MK)),$(v))))
saved = $(strip $(if $(wildcard $(PARAMS_DIR)/$(1).args),$(file <$(PARAMS_DIR)/$(1).args)))
# $(call options,KEY,OPTIONS,VARIABLES[,FALLBACK]): OPTIONS if one of VARIABLES was given, else the saved
# ones, else FALLBACK (a first run: the stage's own defaults).
options = $(strip $(if $(call given,$(3)),$(2),$(or $(call saved,$(1)),$(4))))
differs = $(if $(subst $(strip $(1)),,$(strip $(2)))$(subst $(strip $(2)),,$(strip $(1))),FORCE)
# FORCE when a call gave a stage's variables and they differ from what it last ran with.
stale = $(if $(call given,$(3)),$(call differs,$(call saved,$(1)),$(2)))
save_args = @mkdir -p $(PARAMS_DIR) && printf '%s\n' '$(subst ','\'',$(2))' > $(PARAMS_DIR)/.$(1).tmp \
	&& mv $(PARAMS_DIR)/.$(1).tmp $(PARAMS_DIR)/$(1).args

DATA_KEY := data-$(COMPETITION)
DATA_VARS := SOURCE KAGGLE LIMIT
DATA_OPTS := $(call options,$(DATA_KEY),$(if $(SOURCE),--source $(SOURCE)) $(if $(KAGGLE),--kaggle $(KAGGLE)) \
	$(if $(LIMIT),--limit $(LIMIT)),$(DATA_VARS))
DATA_ARGS := --competition $(COMPETITION) --data-root $(DATA_ROOT) $(DATA_OPTS)

TRAIN_KEY := train-$(RUN)
TRAIN_VARS := MODEL EPOCHS BUDGET CONFIG TRAIN_ARGS
# A run trained outside make (no saved options) is retrained, if ever stale, from its own config.yaml.
TRAIN_OPTS := $(call options,$(TRAIN_KEY),$(if $(MODEL),--model $(MODEL)) $(if $(EPOCHS),--epochs $(EPOCHS)) \
	$(if $(BUDGET),--time-budget $(BUDGET)) $(if $(AUTO_RECIPE),--recipe auto) $(if $(CONFIG),--config $(CONFIG)) \
	$(TRAIN_ARGS),$(TRAIN_VARS),\
	$(if $(wildcard $(RUN_DIR)/config.yaml),--config $(RUN_DIR)/config.yaml))
# make retrains a stale run into a staging folder that replaces it only once training completes
# (TRAIN_ARGS=--extend: continue it when only EPOCHS grew); --resume or --overwrite choose otherwise.
TRAIN_MODE := $(if $(filter --resume --overwrite,$(TRAIN_OPTS)),,--replace --no-resume --no-overwrite)
# DEVICE says where to compute, not what: it is passed when given but never makes a stage stale.
TRAIN_CMD := --data $(DATA_DIR) --run $(RUN) --out-dir $(RUNS_DIR) $(TRAIN_OPTS) $(TRAIN_MODE) $(if $(DEVICE),--device $(DEVICE))

PREDICT_KEY := predict-$(RUN)
PREDICT_VARS := TTA CHECKPOINT
PREDICT_OPTS := $(call options,$(PREDICT_KEY),$(if $(TTA),--tta $(TTA)) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)),\
	$(PREDICT_VARS))
PREDICT_ARGS := --run $(RUN) --runs-dir $(RUNS_DIR) $(PREDICT_OPTS) $(if $(DEVICE),--device $(DEVICE))

# The blend: RUNS if given, else RUN if given, else the runs it last blended, else RUN.
ENSEMBLE_KEY := ensemble-$(subst /,_,$(SUBMISSION))
ENSEMBLE_RUNS := $(call options,$(ENSEMBLE_KEY).runs,$(if $(call given,RUNS),$(RUNS),$(RUN)),RUNS RUN,$(RUN))
ENSEMBLE_OPTS := $(call options,$(ENSEMBLE_KEY).opts,$(ENSEMBLE_ARGS),ENSEMBLE_ARGS)

DATA_STALE := $(call stale,$(DATA_KEY),$(DATA_OPTS),$(DATA_VARS))
TRAIN_STALE := $(call stale,$(TRAIN_KEY),$(TRAIN_OPTS),$(TRAIN_VARS))
PREDICT_STALE := $(call stale,$(PREDICT_KEY),$(PREDICT_OPTS),$(PREDICT_VARS))
ENSEMBLE_STALE := $(sort $(call stale,$(ENSEMBLE_KEY).runs,$(ENSEMBLE_RUNS),RUNS RUN) \
	$(call stale,$(ENSEMBLE_KEY).opts,$(ENSEMBLE_OPTS),ENSEMBLE_ARGS))

.PHONY: FORCE use help venv data train predict ensemble submit validate report sweep lab lab-tables demo smoke test test-gpu test-slow bench bench-models bench-engine bench-step bench-data bench-lab bench-augment quality leaderboard leaderboard-plot bench-probe device-check info zoo clean-demo

FORCE:

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'
	@echo "  now: COMPETITION=$(COMPETITION) RUN=$(RUN)$(foreach v,$(FROM_LOCAL_MK),; $(v) from $(LOCAL_MK))"

use: ## Save choices for later calls: make use COMPETITION=cifar10-jpg SOURCE=path.zip (VAR= forgets one); no args: show
	@touch $(LOCAL_MK)
	@$(foreach v,$(SAVABLE),$(if $(filter command line,$(origin $(v))),\
		grep -v '^$(v) :=' $(LOCAL_MK) > $(LOCAL_MK).tmp; $(if $($(v)),printf '%s := %s\n' '$(v)' '$(subst ','\'',$($(v)))' >> $(LOCAL_MK).tmp;) mv $(LOCAL_MK).tmp $(LOCAL_MK);))
	@echo "saved choices ($(LOCAL_MK)), used by every later make call unless given again:"; cat $(LOCAL_MK)

venv: $(VENV_STAMP) ## Create .venv and install the pinned requirements

$(VENV_STAMP): requirements.txt
	$(BOOT_PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

data: $(DATA_DIR)/meta.json ## Prepare data/<competition>: raw/, arrays, meta.json, split (SOURCE=, KAGGLE=, LIMIT=)

$(DATA_DIR)/meta.json: $(VENV_STAMP) $(DATA_SRC) $(DATA_STALE)
	$(PY) -m pipeline data $(DATA_ARGS)
	$(call save_args,$(DATA_KEY),$(DATA_OPTS))

train: $(RUN_DIR)/manifest.json ## Train MODEL on COMPETITION into checkpoints/<run> (BUDGET=s alone: the best recipe for it)

$(RUN_DIR)/manifest.json: $(DATA_DIR)/meta.json $(TRAIN_SRC) $(TRAIN_STALE)
	$(PY) -m pipeline train $(TRAIN_CMD)
	$(call save_args,$(TRAIN_KEY),$(TRAIN_OPTS))

predict: $(RUN_DIR)/predict.json ## Val + test logits of RUN with TTA

$(RUN_DIR)/predict.json: $(RUN_DIR)/manifest.json $(PREDICT_SRC) $(PREDICT_STALE)
	$(PY) -m pipeline predict $(PREDICT_ARGS)
	$(call save_args,$(PREDICT_KEY),$(PREDICT_OPTS))

# The other runs a blend names (RUNS): predicted with the options they last used; taken as on disk.
$(RUNS_DIR)/%/predict.json: $(RUNS_DIR)/%/manifest.json $(PREDICT_SRC)
	$(PY) -m pipeline predict --run $* --runs-dir $(RUNS_DIR) $(call saved,predict-$*) $(if $(DEVICE),--device $(DEVICE))
	$(call save_args,predict-$*,$(call saved,predict-$*))

$(RUNS_DIR)/%/manifest.json:
	@echo "$(RUNS_DIR)/$*: no trained run there; train it first (make train RUN=$* MODEL=... or CONFIG=...)"; exit 1

ensemble: $(SUBMISSION) ## Blend RUNS into submissions/predictions.csv

$(SUBMISSION): $(foreach r,$(ENSEMBLE_RUNS),$(RUNS_DIR)/$(r)/predict.json) $(ENSEMBLE_SRC) $(ENSEMBLE_STALE)
	$(PY) -m pipeline ensemble $(ENSEMBLE_RUNS) --runs-dir $(RUNS_DIR) --out $@ $(ENSEMBLE_OPTS)
	$(call save_args,$(ENSEMBLE_KEY).runs,$(ENSEMBLE_RUNS))
	$(call save_args,$(ENSEMBLE_KEY).opts,$(ENSEMBLE_OPTS))

validate: $(SUBMISSION) ## Check predictions.csv against the sample submission
	$(PY) -m pipeline validate $(SUBMISSION) --data $(DATA_DIR)

submit: $(SUBMISSION) ## Validate and upload to Kaggle (SUBMIT_ARGS=--dry-run to rehearse)
	$(PY) -m pipeline submit $(SUBMISSION) $(SUBMIT_ARGS)

report: $(RUN_DIR)/manifest.json ## Self-contained HTML report of RUN (curves, confusion, t-SNE, ...)
	$(PY) -m pipeline report $(RUN) --runs-dir $(RUNS_DIR)

sweep: $(DATA_DIR)/meta.json ## Optuna sweep: NAME=lr-study CONFIG=configs/x.yaml GRID="--grid lr=0.1,0.01"
	$(PY) -m pipeline sweep --name $(NAME) $(if $(CONFIG),--base-config $(CONFIG)) --set data=$(DATA_DIR) $(GRID)

lab: $(VENV_STAMP) ## A course lab beside its report: LAB=ece661-simplenn SCALE=quick|full JOBS=2 (LAB_ARGS=--list)
	@$(if $(LAB)$(filter --list,$(LAB_ARGS)),,echo "make lab: give LAB=<name> ($(LABS))" >&2; exit 2)
	$(PY) -m pipeline lab $(LAB) --scale $(SCALE) $(if $(JOBS),--jobs $(JOBS)) $(LAB_ARGS)

# The CIFAR-10 labs whose tables README.md shows between <!-- lab:NAME:start/end --> markers.
README_LABS := ece661-simplenn ece590-lenet5 cs535-cnn4 cmpe597-cnn3

lab-tables: $(VENV_STAMP) ## Redraw README's lab tables and sweeps/lab-<lab>/report.html from results/labs/ alone
	@set -e; for lab in $(README_LABS); do \
		if [ -d results/labs/$$lab ]; then $(PY) -m pipeline lab $$lab --scale full --report-only --readme README.md > /dev/null; \
			echo "README.md: $$lab table redrawn; sweeps/lab-$$lab/report.html"; fi; done

info: $(VENV_STAMP) ## Per-layer params/MACs of MODEL
	$(PY) -m pipeline info --model $(MODEL_NAME)

zoo: $(VENV_STAMP) ## Params/MACs of every registered model on 3x32x32 (the README table)
	$(PY) -m pipeline info --zoo

bench-models: $(VENV_STAMP) ## Forward+backward img/s of every model (batch 128)
	$(PY) -m bench.model_throughput

demo: $(VENV_STAMP) ## The whole chain offline on scikit-learn's digits, ending in a dry-run submit
	$(MAKE) --no-print-directory submit COMPETITION=digits MODEL=resnet20 EPOCHS=$(if $(filter command line,$(origin EPOCHS)),$(EPOCHS),15) \
		RUN=digits-resnet20 TTA=none SUBMISSION=submissions/digits-predictions.csv SUBMIT_ARGS=--dry-run

smoke: $(VENV_STAMP) ## The chain on a 1,000-image subset of the shared CIFAR-10 bundle (configs/smoke.yaml)
	@test -f $(SHARED_BUNDLE) || { echo "smoke: $(SHARED_BUNDLE) not found (the shared CIFAR-10 bundle)"; exit 1; }
	$(MAKE) --no-print-directory submit COMPETITION=cifar10-smoke SOURCE=$(SHARED_BUNDLE) LIMIT=1000 \
		MODEL=resnet20 CONFIG=configs/smoke.yaml $(if $(filter command line,$(origin EPOCHS)),EPOCHS=$(EPOCHS)) \
		RUN=cifar10-smoke-resnet20 SUBMISSION=submissions/smoke-predictions.csv SUBMIT_ARGS=--dry-run

test: $(VENV_STAMP) ## Run the test suite
	$(PY) -m pytest -q

test-gpu: $(VENV_STAMP) ## The CUDA tests (fp16+GradScaler resume, bf16, compile, GPU loader, predict); skip without a GPU
	$(PY) -m pytest -q -rs -m cuda $$(grep -l "mark.cuda" tests/*.py)

test-slow: $(VENV_STAMP) ## Tests left out of `make test` for their CPU minutes (real inductor compile)
	$(PY) -m pytest -q -rs -m slow

bench: $(VENV_STAMP) ## Training img/s: the default path vs every variant (precision, layout, compile) and the naive loop; inference
	$(PY) -m bench.run

quality: $(VENV_STAMP) ## A recipe end to end on the shared CIFAR-10 bundle (CONFIG=configs/airbench94.yaml SEED= FINAL_FIT=1)
	@test -f $(SHARED_BUNDLE) || { echo "quality: $(SHARED_BUNDLE) not found (the shared CIFAR-10 bundle)"; exit 1; }
	$(PY) -m bench.quality --source $(SHARED_BUNDLE) --config $(or $(CONFIG),configs/resnet20-cpu-quality.yaml) \
		$(if $(SEED),--seed $(SEED)) $(if $(FINAL_FIT),--final-fit)

leaderboard: $(VENV_STAMP) ## The recipes that fit this machine + their greedy ensemble -> records in results/leaderboard/, the frontier PNG, README (LEADERBOARD_ARGS="--recipes configs/x.yaml@EPOCHS:SEEDS ..." or "--blend RUN RUN ...")
	@test -f $(SHARED_BUNDLE) || { echo "leaderboard: $(SHARED_BUNDLE) not found (the shared CIFAR-10 bundle)"; exit 1; }
	$(PY) -m bench.leaderboard --source $(SHARED_BUNDLE) $(if $(SEEDS),--seeds $(SEEDS)) $(LEADERBOARD_ARGS)

leaderboard-plot: $(VENV_STAMP) ## Redraw bench/results/leaderboard.png (accuracy vs training time) from results/leaderboard/ alone
	$(PY) -m bench.leaderboard --from-records

bench-probe: $(VENV_STAMP) ## Each recipe's probe img/s vs its first real epochs' (ratio; PROBE_RECIPES=configs/a.yaml ...)
	@test -f $(SHARED_BUNDLE) || { echo "bench-probe: $(SHARED_BUNDLE) not found (the shared CIFAR-10 bundle)"; exit 1; }
	$(PY) -m bench.probe_honesty --source $(SHARED_BUNDLE) $(if $(PROBE_RECIPES),--recipes $(PROBE_RECIPES))

# No $(VENV_STAMP) here: a lent GPU has no .venv and no internet to build one, so the check runs
# under that machine's own python3 (torch, torchvision, timm, scikit-learn, ...) when .venv is absent.
device-check: ## The prepared GPU check, <8 min on one H100: SOURCE=cifar10-jpg.zip (TINY=1: the CPU path; DEVICE_CHECK_ARGS=)
	$(if $(wildcard $(PY)),$(PY),python3) -m bench.device_check --source $(or $(SOURCE),$(SHARED_BUNDLE)) \
		$(if $(TINY),--tiny) $(if $(LIMIT),--limit $(LIMIT)) $(DEVICE_CHECK_ARGS)

bench-engine: $(VENV_STAMP) ## airbench94 steps through the engine vs a bare loop of the same maths (img/s ratio)
	$(PY) -m bench.engine_overhead

bench-lab: $(VENV_STAMP) ## Each CIFAR-10 lab's model through the lab runner vs a bare loop (img/s ratio; LABS_BENCH=a,b)
	$(PY) -m bench.lab_throughput --data $(DATA_ROOT)/cifar10-jpg $(if $(LABS_BENCH),--labs $(LABS_BENCH))

bench-augment: $(VENV_STAMP) ## The lab policy alone: batched torch ops vs albumentations per image (img/s)
	$(PY) -m bench.lab_augment

bench-step: $(VENV_STAMP) ## Per-step bookkeeping, item by item: optimizer for-loop/foreach/fused, EMA update, autocast
	$(PY) -m bench.step_overhead

bench-data: $(VENV_STAMP) ## Data stage + predict/ensemble/validate at Kaggle scale (50k train + 300k test PNGs in 7z): time, peak RSS
	$(PY) -m bench.data_scale --json bench/results/data_scale.json $(BENCH_DATA_ARGS)

clean-demo: ## Remove the demo's data, run and submission
	rm -rf $(DATA_ROOT)/digits $(RUNS_DIR)/digits-resnet20 submissions/digits-predictions.* $(PARAMS_DIR)
