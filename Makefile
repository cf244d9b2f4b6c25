PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test

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

$(VENV)/.run-installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@
