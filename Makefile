# Quick start: `make run` (default grid) and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= config.yaml
# Extra Snakemake arguments, e.g. SMK_ARGS="--forceall" or "--dry-run".
SMK_ARGS ?=

.PHONY: run test lint venv verify resync readme report plan gpu-check

venv: $(VENV)/.installed

# torch first and alone: its exact pin takes the CPU build; a bare torch would pull CUDA.
$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$$(grep '^torch==' requirements.txt)"
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# The YAML check first: Snakemake's own message for a syntax error gives no line or column
# (Snakemake 9.27); it can go once Snakemake's names them.
run: venv
	$(BIN)/python -m knowledge_recovery.pipeline.config $(CONFIG)
	if grep -Eq 'deploy:[[:space:]]*openvino' $(CONFIG); then $(MAKE) .venv-openvino; fi
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --configfile $(CONFIG) $(SMK_ARGS)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m knowledge_recovery.cli.report --if-finished --configfile $(CONFIG)
	@$(BIN)/python -m knowledge_recovery.cli.show --configfile $(CONFIG)

# The grid's Snakemake report (summary/report.html), attached to the parent MLflow run
report: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m knowledge_recovery.cli.report --configfile $(CONFIG)

# Check every artifact of a results folder against its manifest (file hashes); what is damaged
# is listed, and the next `make run` sets it aside and rebuilds it.
verify: venv
	$(BIN)/python -m knowledge_recovery.cli.verify --configfile $(CONFIG)

# Log to MLflow whatever a results folder holds and the store lacks (after a tracking outage),
# or copy a finished grid into another store: MLFLOW_TRACKING_URI=http://host:5000 make resync
resync: venv
	$(BIN)/python -m knowledge_recovery.cli.resync --configfile $(CONFIG)

# The grid's jobs, compute, memory, wall time and disk before launch (docs/cluster.md);
# PLAN_ARGS="--profile profiles/slurm": what each cluster job asks for, and jobs over fixed limits.
plan: venv
	$(BIN)/python -m knowledge_recovery.cli.plan --configfile $(CONFIG) $(PLAN_ARGS)

# The smoke grid in float16 and bfloat16 on this machine's GPU against float32 on its CPU (exits 0
# saying so where there is no GPU): knowledge_recovery.cli.gpu_check
gpu-check: venv
	$(BIN)/python -m knowledge_recovery.cli.gpu_check

# The results blocks of README.md and docs/ from a finished run of CONFIG (docs/results/<experiment>/)
readme: venv
	$(BIN)/python -m knowledge_recovery.cli.readme --configfile $(CONFIG)

# Two workers, one test file each at a time (a file's tests share its module fixtures, such as the
# smoke grid run once): the slow tests wait on subprocesses, SLURM and servers as much as they
# compute. TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: lint
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# ruff's rule set is in pyproject.toml; snakemake --lint checks the Snakefile and rules/ on the
# default config and on every config in config/ (each includes other rules and paths).
lint: venv
	$(BIN)/ruff check src tests workflow_scripts bench
	for c in config.yaml config/*.yaml; do \
	  if grep -q '\.\./shared/' $$c && [ ! -d ../shared/data ]; then echo "skip $$c: no ../shared"; continue; fi; \
	  PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --lint --quiet all --configfile $$c || exit 1; done

# llmcompressor in its own environment (its torch/transformers pins conflict with ours), for
# bench/llmcompressor_check.py only.
.venv-llmcompressor/.installed:
	$(PYTHON) -m venv .venv-llmcompressor
	.venv-llmcompressor/bin/pip install --quiet "$$(grep '^torch==' requirements.txt)"
	.venv-llmcompressor/bin/pip install --quiet llmcompressor==0.14.0.1
	.venv-llmcompressor/bin/pip install --quiet --no-deps -e .
	touch $@

# The deploy step's environment (optimum-intel + OpenVINO; its pins conflict with ours), built
# by `make run` when the config deploys a cell. optimum-intel without its dependencies: it lists
# torchvision, which this stack does not use and which breaks it when installed.
.venv-openvino/.installed: envs/openvino-requirements.txt pyproject.toml
	test -x .venv-openvino/bin/python || $(PYTHON) -m venv .venv-openvino
	.venv-openvino/bin/pip install --quiet --upgrade pip
	.venv-openvino/bin/pip install --quiet "$$(grep '^torch==' requirements.txt)"
	.venv-openvino/bin/pip install --quiet -r envs/openvino-requirements.txt
	.venv-openvino/bin/pip install --quiet --no-deps optimum-intel==2.2.0
	.venv-openvino/bin/pip install --quiet --no-deps -e .
	touch $@

.venv-openvino: .venv-openvino/.installed
.PHONY: .venv-openvino

.venv-llmcompressor: .venv-llmcompressor/.installed
.PHONY: .venv-llmcompressor
