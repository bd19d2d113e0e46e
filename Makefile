# BTS pipeline. `make help` lists the targets.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.DEFAULT_GOAL := help
.PHONY: help setup browser repro test lint format summary clean-venv

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install -qq --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

setup: $(VENV)/.installed ## create .venv with the pinned dependencies (requirements.lock)

repro: setup ## run the whole pipeline (dvc repro) and summarize what it produced
	@test -d .dvc || { echo "not a DVC repository: run 'dvc init' first" >&2; exit 1; }
	dvc repro --quiet  # each stage says what it did; without DVC's git add / dvc push hints
	@$(BIN)/python -m bts.summary

# The monitoring page's test opens it in Debian's Chromium, pinned; the distribution's current build if the pin is gone.
CHROMIUM := /usr/bin/chromium
CHROMIUM_VERSION ?= 150.0.7871.100-1~deb12u1
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

browser: ## install Debian's chromium (headless browser of the tests) unless it is there
	@test -x $(CHROMIUM) || { \
	  echo "installing chromium $(CHROMIUM_VERSION) (apt-get)"; \
	  $(SUDO) apt-get update -qq && \
	  { DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium=$(CHROMIUM_VERSION) >/dev/null 2>&1 || \
	    { echo "chromium $(CHROMIUM_VERSION) is no longer offered: installing the distribution's current build"; \
	      DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }; }; }

test: lint browser ## lint, then the whole test suite (unit and integration)
	$(BIN)/python -m pytest

lint: setup ## ruff check and format check
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: setup ## format the code with ruff
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

clean-venv: ## remove .venv
	rm -rf $(VENV)
