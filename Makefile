# The two commands: `make run` (embedded default: SQLite, in-process timers, demo data)
# and `make test` (PostgreSQL + Redis + SQLite, the whole suite). Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: run test lint typecheck check bench bench-full services clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(STAMP)
	$(BIN)/bpm db upgrade
	$(BIN)/bpm demo load
	$(BIN)/bpm serve --host $(HOST) --port $(PORT)

services:
	@bash scripts/services.sh

# One pytest worker per core: each worker gets its own PostgreSQL schema and SQLite files
# (tests/conftest.py); the Redis fault tests share database 15 and run in one worker.
test: $(DEV_STAMP) services
	$(BIN)/python -m pytest -n auto --dist loadgroup

lint: $(DEV_STAMP)
	$(BIN)/ruff check .

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

check: lint typecheck test

bench: $(DEV_STAMP) services
	$(BIN)/python bench/engine_throughput.py
	$(BIN)/python bench/timers.py --quick

bench-full: $(DEV_STAMP) services
	$(BIN)/python bench/engine_throughput.py --instances 1000
	$(BIN)/python bench/timers.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info
