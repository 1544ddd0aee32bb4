# orders-service developer commands. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-unit test-integration test-e2e lint format proto migrate clean \
	loadtest-create loadtest-mixed loadtest-duration bench bench-save bench-compare bench-results \
	pprof-cpu pprof-dump pprof-web

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Start the service (REST :8080, gRPC :9090); uses local PostgreSQL/Redis or starts embedded ones.
run: $(STAMP)
	$(BIN)/orders-service serve

## The whole test suite (unit, integration, e2e, benchmarks as tests).
test: $(STAMP)
	$(BIN)/python -m pytest -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

test-integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

test-e2e: $(STAMP)
	$(BIN)/python -m pytest -q tests/e2e

lint: $(STAMP)
	$(BIN)/ruff check service native tests benchmarks scripts
	$(BIN)/ruff format --check service native tests benchmarks scripts
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format service native tests benchmarks scripts
	$(BIN)/ruff check --fix service native tests benchmarks scripts

proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

migrate: $(STAMP)
	$(BIN)/orders-service migrate

## Micro-benchmarks (pytest-codspeed walltime locally; CI runs them under CodSpeed's action).
BENCH_ARGS ?= --codspeed-max-time 1 --codspeed-warmup-time 0.2
bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks/ -q --codspeed --codspeed-mode walltime $(BENCH_ARGS)

bench-save: bench
	$(BIN)/python -m benchmarks.compare save

bench-compare: bench
	$(BIN)/python -m benchmarks.compare compare

## Every figure of benchmarks/RESULTS.md in one run: pgbench ceiling, each scenario, RSS (~4 min).
bench-results: $(STAMP)
	$(BIN)/python -m benchmarks.results

## Load tests against a running service (LOADTEST_URL, default http://127.0.0.1:8080).
LOADTEST_ARGS ?=
loadtest-create: $(STAMP)
	$(BIN)/python -m benchmarks.load --scenario create --requests 20000 --concurrency 32 $(LOADTEST_ARGS)

loadtest-mixed: $(STAMP)
	$(BIN)/python -m benchmarks.load --scenario mixed --requests 50000 --concurrency 32 $(LOADTEST_ARGS)

loadtest-duration: $(STAMP)
	$(BIN)/python -m benchmarks.load --scenario mixed --duration $${DURATION:-30} --concurrency 32 $(LOADTEST_ARGS)

## Live profiling through the running service's admin port (PPROF_PORT, default 6060).
PPROF_URL ?= http://127.0.0.1:$${PPROF_PORT:-6060}
PPROF_SECONDS ?= 30
pprof-cpu:
	mkdir -p profiles
	curl -fsS -o profiles/cpu-$$(date +%Y%m%dT%H%M%S).svg "$(PPROF_URL)/debug/pprof/profile?seconds=$(PPROF_SECONDS)$${PID:+&pid=$$PID}"
	ls -t profiles/*.svg | head -1

pprof-dump:
	curl -fsS "$(PPROF_URL)/debug/pprof/dump$${PID:+?pid=$$PID}"

pprof-web:
	mkdir -p profiles
	curl -fsS -o profiles/cpu.speedscope.json "$(PPROF_URL)/debug/pprof/profile?seconds=$(PPROF_SECONDS)&format=speedscope$${PID:+&pid=$$PID}"
	@if command -v npx >/dev/null 2>&1; then npx --yes speedscope profiles/cpu.speedscope.json; \
	else echo "open profiles/cpu.speedscope.json in https://www.speedscope.app"; fi

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
