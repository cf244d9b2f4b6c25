PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test bench

## Install the service, migrate its database and serve it (SQLite by default).
run: $(VENV)/.run-installed
	$(BIN)/flask --app app db upgrade
	$(BIN)/gunicorn app:app

## Install the test tools and run the linters, the type checker and every test.
test: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

## Seed databases, load the service and a bare Flask floor with wrk, write
## BENCHMARKS.md. Settings: BENCH_* variables (README: "Benchmarks").
bench: $(VENV)/.run-installed
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/python bench/run.py

$(VENV)/.run-installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@
