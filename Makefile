PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run run-postgresql test ci browser bench

## Install the service, migrate its database and serve it (SQLite by default)
## on this machine only (127.0.0.1), even when PORT is set; HOST=0.0.0.0
## serves every interface.
run: $(VENV)/.run-installed
	$(BIN)/flask --app app db upgrade
	HOST=$${HOST:-127.0.0.1} $(BIN)/gunicorn app:app

## The same on PostgreSQL: the database POSTGRES_DB on the server POSTGRES
## (by default `identity` on this machine's server, as user postgres) is
## created when it is missing, then migrated and served. Needs psql.
POSTGRES ?= postgresql://postgres@127.0.0.1:5432
POSTGRES_DB ?= identity
run-postgresql: $(VENV)/.run-installed
	psql "$(POSTGRES)/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = '$(POSTGRES_DB)'" | grep -q 1 \
		|| psql "$(POSTGRES)/postgres" -qc 'CREATE DATABASE "$(POSTGRES_DB)"'
	DATABASE_URL=$(POSTGRES)/$(POSTGRES_DB) $(BIN)/flask --app app db upgrade
	DATABASE_URL=$(POSTGRES)/$(POSTGRES_DB) HOST=$${HOST:-127.0.0.1} $(BIN)/gunicorn app:app

## Install the test tools and run the linters, the type checker and every test.
## The docs page test is skipped where Chromium is missing (see `make ci`).
test: $(VENV)/.dev-installed node_modules/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

## Seed databases, load the service and a bare Flask floor with wrk, write
## BENCHMARKS.md. Settings: BENCH_* variables (docs/development.md: "Benchmarks").
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

## CI on a new machine: the browser that the docs page test drives, then `make test`.
ci: browser test

## Debian's Chromium and ChromeDriver (as root), unless they are installed.
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

## newman, pinned by package-lock.json, for the Postman collection test.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@
