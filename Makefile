# The two commands: `make run` (embedded default: SQLite, in-process timers, demo data)
# and `make test` (PostgreSQL + Redis + SQLite, the whole suite). Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
UI := worklist_ui
NODE_STAMP := $(UI)/node_modules/.installed
HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: run test lint typecheck check bench bench-full bench-scale mutate services browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Node packages: the pages' bundles are rebuilt from them (tests/ui/test_assets.py) and every
# diagram is opened as Camunda Modeler does (tests/bpmn/test_diagrams_modeler.py): exactly what
# package-lock.json pins, again whenever it changes.
# --include=dev: they are devDependencies, and NODE_ENV=production must not drop them.
$(NODE_STAMP): $(UI)/package.json $(UI)/package-lock.json
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { \
		echo "make: node and npm are needed for the diagram import check (tests/bpmn/test_diagrams_modeler.py);" \
			"install Node.js 20 or later with npm, e.g. apt-get install nodejs npm" >&2; exit 1; }
	npm ci --prefix $(UI) --include=dev --no-audit --no-fund --loglevel=error
	touch $@

# The browser tests (tests/ui) drive Debian's chromium through Playwright, which never
# downloads a browser of its own; the CJK fonts make the Chinese pages render as text.
browser:
	@command -v chromium >/dev/null 2>&1 && fc-list 2>/dev/null | grep -qi "Noto Sans CJK" || { \
		if [ "$$(id -u)" != 0 ]; then \
			echo "make: the browser tests need Debian's chromium and fonts-noto-cjk:" \
				"sudo apt-get install chromium fonts-noto-cjk" >&2; exit 1; fi; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium fonts-noto-cjk >/dev/null 2>&1 || { \
			apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
				chromium fonts-noto-cjk >/dev/null; }; }
	@chromium --version 2>/dev/null | head -1

run: $(STAMP)
	$(BIN)/bpm db upgrade
	$(BIN)/bpm demo load
	$(BIN)/bpm serve --host $(HOST) --port $(PORT)

services:
	@bash scripts/services.sh

# One pytest worker per core: each worker gets its own PostgreSQL schema and SQLite files
# (tests/conftest.py) and Redis databases of its own.
test: $(DEV_STAMP) $(NODE_STAMP) browser services
	$(BIN)/python -m pytest -n auto --dist loadgroup --durations=15

lint: $(DEV_STAMP)
	$(BIN)/ruff check .

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

check: lint typecheck test

bench: $(DEV_STAMP) services
	$(BIN)/python bench/engine_throughput.py
	$(BIN)/python bench/timers.py --quick
	$(BIN)/python bench/pages.py --scale 50000

bench-full: $(DEV_STAMP) services
	$(BIN)/python bench/engine_throughput.py --instances 1000
	$(BIN)/python bench/timers.py
	$(BIN)/python bench/pages.py --scale 200000

# The inbox and the board at a brokerage's size (docs/scale.md): the first run generates the
# database bpm_scale on the test server (1,000,000 open tasks, 5,000,000 completed cases with
# their history; about an hour on 2 cores) and later runs reuse it. Never part of `make test`.
bench-scale: $(DEV_STAMP) services
	$(BIN)/python bench/scale_data.py
	$(BIN)/python bench/scale.py

# Mutation testing over the modules listed in setup.cfg's [mutmut] section; long (an hour or
# more on 2 cores), so never part of `make test`. MUTANTS narrows it, e.g.
# make mutate MUTANTS='engine.access.masking*'. Results: .venv/bin/mutmut results / show NAME.
MUTANTS ?=
mutate: $(DEV_STAMP) services
	$(BIN)/mutmut run --max-children 2 $(MUTANTS)
	$(BIN)/mutmut results

clean:
	rm -rf mutants $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info $(UI)/node_modules
