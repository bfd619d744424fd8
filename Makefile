# Quick start: `make run` (default grid) and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= config.yaml
# Extra Snakemake arguments, e.g. SMK_ARGS="--forceall" or "--dry-run".
SMK_ARGS ?=

.PHONY: run test venv clean-smoke

venv: $(VENV)/.installed

# torch first and alone: its exact pin takes the CPU build; a bare torch would pull CUDA.
$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$$(grep '^torch==' requirements.txt)"
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

run: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --configfile $(CONFIG) $(SMK_ARGS)
	@$(BIN)/python -m knowledge_recovery.show --configfile $(CONFIG)

test: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q $(PYTEST_ARGS)
