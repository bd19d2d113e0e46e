# BTS pipeline. `make help` lists the targets.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.DEFAULT_GOAL := help
.PHONY: help setup browser postgres java team-up team-down repro test test-fast lint format summary clean-venv

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# uv (from PyPI, pinned) installs requirements.lock in about a second when its cache holds every pinned package (it
# then needs no network), else from PyPI, saying what it does as it goes; pip is the fallback where uv cannot be had.
# Both compile the installed modules to bytecode once, here: where PYTHONDONTWRITEBYTECODE is set (many CI images),
# every stage, test and `bts` command would otherwise compile MLflow, pandas and scikit-learn anew (about 5 s each).
UV_VERSION := 0.13.9
PIP := $(BIN)/python -m pip --disable-pip-version-check
UV_INSTALL := $(BIN)/uv pip install --python $(BIN)/python

$(VENV)/.installed: requirements.lock pyproject.toml
	@echo "setup: $(VENV) with the pinned dependencies of requirements.lock"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if $(PIP) install -q uv==$(UV_VERSION); then \
	  echo "setup: installing with uv $(UV_VERSION), then compiling to bytecode (about 20 s)"; \
	  { $(UV_INSTALL) --offline --compile-bytecode -r requirements.lock 2>$(VENV)/.offline.log && cat $(VENV)/.offline.log || \
	    { echo "setup: uv's cache lacks some pinned packages: downloading them from PyPI"; \
	      $(UV_INSTALL) --compile-bytecode -r requirements.lock; }; } && \
	  $(UV_INSTALL) --no-deps --no-build-isolation -e .; \
	else \
	  echo "setup: uv $(UV_VERSION) unavailable: installing with pip (a few minutes)"; \
	  $(PIP) install --progress-bar on -r requirements.lock && $(PIP) install -q --no-deps --no-build-isolation -e .; \
	fi
	@touch $@

setup: $(VENV)/.installed ## create .venv with the pinned dependencies (requirements.lock)

repro: setup ## run the whole pipeline (dvc repro) and summarize what it produced
	@test -d .dvc || { echo "not a DVC repository: run 'dvc init' first" >&2; exit 1; }
	@$(BIN)/bts params >/dev/null  # params.yaml whole, first: an unknown section or a YAML error is one line naming it
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

# Team mode (and its tests) runs a PostgreSQL server from the distribution's binaries, pinned; its current build if the
# pin is gone. Messages go to stderr: `eval "$(make -s team-up)"` runs what team-up prints on stdout.
POSTGRES_MAJOR := 15
POSTGRES_VERSION ?= 15.18-0+deb12u1
INITDB := /usr/lib/postgresql/$(POSTGRES_MAJOR)/bin/initdb

postgres: ## install Debian's PostgreSQL server (team mode and its tests) unless it is there
	@test -x $(INITDB) || command -v initdb >/dev/null || { \
	  echo "installing postgresql-$(POSTGRES_MAJOR) $(POSTGRES_VERSION) (apt-get)" >&2; \
	  $(SUDO) apt-get update -qq && \
	  { DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql-$(POSTGRES_MAJOR)=$(POSTGRES_VERSION) >/dev/null 2>&1 || \
	    { echo "postgresql-$(POSTGRES_MAJOR) $(POSTGRES_VERSION) is no longer offered: installing the distribution's current build" >&2; \
	      DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql-$(POSTGRES_MAJOR) >/dev/null; }; }; }

# Ports: `make team-up TEAM_POSTGRES_PORT=5433 TEAM_SERVER_PORT=5005` (or the same variables in the environment);
# without them, the ports used last time when free, else free ones.
TEAM_POSTGRES_PORT ?=
TEAM_SERVER_PORT ?=

team-up: setup postgres ## start PostgreSQL and an MLflow tracking server on it (data in .team/); prints the exports to use
	@$(BIN)/python -m bts.team up $(if $(TEAM_POSTGRES_PORT),--postgres-port $(TEAM_POSTGRES_PORT)) $(if $(TEAM_SERVER_PORT),--server-port $(TEAM_SERVER_PORT))

team-down: setup ## stop the team's MLflow server and PostgreSQL (the data stays in .team/)
	@$(BIN)/python -m bts.team down

# `bts batch-predict --engine spark` and its tests start Spark, which needs a Java runtime (Spark 4: Java 17 or later).
java: setup ## check for the Java runtime Spark needs (JAVA_HOME's, else PATH's), and say how to get one if missing
	@$(BIN)/python -m bts.batch.spark_session

test: lint browser postgres java ## lint, then the whole test suite (unit and integration)
	$(BIN)/python -m pytest

test-fast: lint ## lint, then the unit tests alone: no pipeline, server or service (about a minute)
	$(BIN)/python -m pytest tests/unit

lint: setup ## ruff check and format check
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: setup ## format the code with ruff
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

clean-venv: ## remove .venv
	rm -rf $(VENV)
