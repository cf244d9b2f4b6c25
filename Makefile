PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run run-postgresql check test ci browser bench

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

## The quick loop: the linters, the type checker, and the tests marked `quick`
## (no server, no database process) on SQLite, a tenth of each property test's
## examples (the Hypothesis profile `quick`).
check: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -m "quick and not postgresql" --hypothesis-profile=quick

## Install the test tools and run the linters, the type checker and every test,
## TEST_WORKERS pytest-xdist processes at once (tests of one xdist_group run
## one after another on one of them). The docs page test is skipped where
## Chromium is missing (see `make ci`).
TEST_WORKERS ?= 4
test: $(VENV)/.dev-installed node_modules/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup

## Seed databases, load the service and a bare Flask floor with wrk, write
## BENCHMARKS.md and its charts. Settings: BENCH_* variables
## (docs/development.md: "Benchmarks").
bench: $(VENV)/.run-installed $(VENV)/.bench-installed
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(BIN)/python bench/run.py

$(VENV)/.bench-installed: bench/requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	touch $@

$(VENV)/.run-installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt bench/requirements.txt
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
