# orders-service developer commands. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lock lock-check audit image image-smoke run test test-pure test-unit test-integration test-e2e lint \
	format proto migrate clean loadtest-create loadtest-mixed loadtest-duration bench bench-save bench-compare bench-gate \
	bench-rebaseline bench-results bench-runtimes bench-sitting bench-revisions bench-overload bench-watchers \
	pprof-cpu pprof-dump pprof-web soak test-faults fuzz

# Hashed lock files (requirements/README.md): what every install takes, exactly.
#   build-lock.txt   pip and the build backend (setuptools, wheel, Cython) for the native/ extension
#   dev-lock.txt     the dev extra: runtime, embedded, runtimes, tracing, test and lint tools
#   lock.txt         runtime only: what the container image installs (lock-tracing.txt: + tracing)
LOCKS := requirements/build-lock.txt requirements/dev-lock.txt requirements/lock.txt requirements/lock-tracing.txt

# The project itself goes in last with --no-deps (nothing unlocked comes along) and
# --no-build-isolation (its build backend is the locked one just installed, not whatever an
# isolated build environment would fetch). lock-check then fails when pyproject.toml asks for
# something the locks do not pin (run `make lock`), and pip check when a pin breaks a requirement.
$(STAMP): pyproject.toml $(LOCKS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/build-lock.txt
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev-lock.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python requirements/check.py
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

## Re-resolve the lock files from pyproject.toml with uv (a dev dependency, so itself locked), with
## hashes of every file of every pinned release. Pins that still fit are kept: LOCK_ARGS=--upgrade
## moves every pin to the newest release, LOCK_ARGS="--upgrade-package NAME" one. The dev lock is
## resolved first; the others are constrained by it, so every lock pins the same versions.
UV := $(BIN)/uv
LOCK_ARGS ?=
UV_COMPILE = $(UV) pip compile --quiet --generate-hashes --universal --python-version 3.11 \
	--custom-compile-command "make lock"
lock:
	@test -x $(UV) || $(MAKE) install || test -x $(UV)  # a stale lock fails lock-check, after uv is in
	$(UV_COMPILE) $(LOCK_ARGS) --extra dev -o requirements/dev-lock.txt pyproject.toml
	$(UV_COMPILE) -c requirements/dev-lock.txt -o requirements/lock.txt pyproject.toml
	$(UV_COMPILE) -c requirements/dev-lock.txt --extra tracing -o requirements/lock-tracing.txt pyproject.toml
	$(UV_COMPILE) -c requirements/dev-lock.txt -o requirements/build-lock.txt requirements/build.in
	$(MAKE) install

## Offline: every requirement of pyproject.toml (extras, build-system) is pinned, with hashes, the
## same version in every lock (also part of `make install`).
lock-check: $(STAMP)
	$(BIN)/python requirements/check.py

## pip-audit of every locked release (runtime, dev tools, build backend) against PyPI's vulnerability
## data (its JSON API, per release: needs the network). --strict: a release the service could not
## look up fails the audit instead of passing unchecked.
audit: $(STAMP)
	$(BIN)/pip-audit --strict --disable-pip --require-hashes --progress-spinner off \
		$(foreach lock,$(LOCKS),-r $(lock))

## The container image with the local Docker engine. Where no registry is reachable, build the base
## first (deploy/local-image/build-base.sh) and pass IMAGE_BUILD_ARGS="--build-arg PYTHON_BASE=..."
## (that script prints the line).
IMAGE ?= orders-service:local
IMAGE_BUILD_ARGS ?=
image:
	docker build $(IMAGE_BUILD_ARGS) -t $(IMAGE) .
	docker image ls $(IMAGE)

## Start that image against this machine's PostgreSQL and Redis (deploy/smoke-test.sh): refusals
## without AUTH_ISSUER / CURSOR_SECRET, then /health, /ready, 401 without a token, one create.
image-smoke:
	deploy/smoke-test.sh $(IMAGE)

## Start the service (REST :8080, gRPC :9090); uses local PostgreSQL/Redis or starts embedded ones.
run: $(STAMP)
	$(BIN)/orders-service serve

## Serve with bearer-token authentication (AUTH_MODE=jwt), keys from `orders-service dev-keys`.
run-auth: $(STAMP)
	$(BIN)/orders-service dev-keys
	AUTH_MODE=jwt AUTH_ISSUER=orders-service-dev AUTH_AUDIENCE=orders-service \
	AUTH_JWKS_FILE=$${DATA_DIR:-.data}/auth/jwks.json $(BIN)/orders-service serve

## The whole test suite (unit, integration, e2e, benchmarks as tests).
test: $(STAMP)
	$(BIN)/python -m pytest -q

## The suite again with the pure-Python twins of native/ forced (ORDERS_NATIVE=0); PURE_TESTS
## narrows it to some paths (CI: the modules whose code paths run native/, see .ci/run).
PURE_TESTS ?=
test-pure: $(STAMP)
	ORDERS_NATIVE=0 $(BIN)/python -m pytest -q $(PURE_TESTS)

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

test-integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

test-e2e: $(STAMP)
	$(BIN)/python -m pytest -q tests/e2e

## Fault injection (also part of `make test`): private PostgreSQL/Redis restarted, stopped, exhausted;
## SIGTERM/SIGKILL of the service's processes. Prints each scenario's figures (RELIABILITY.md).
REDIS_OUTAGE_SECONDS ?= 30
test-faults: $(STAMP)
	REDIS_OUTAGE_SECONDS=$(REDIS_OUTAGE_SECONDS) $(BIN)/python -m pytest -q -s tests/faults

## Hostile input: schemathesis against the service's /openapi.json with every check, FUZZ_EXAMPLES
## examples per operation (the suite runs 30) and a new seed each run (FUZZ_SEED=n repeats one).
FUZZ_EXAMPLES ?= 500
FUZZ_SEED ?=
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_SEED=$(FUZZ_SEED) $(BIN)/python -m pytest -q -s --timeout 3600 \
		tests/hostile/test_schemathesis.py

## Soak: the whole service under mixed REST + gRPC load for SOAK_SECONDS (default 600); fails on any
## error, a died process or RSS growth over 10% after the warm-up. Writes benchmarks/soak-latest.json.
SOAK_SECONDS ?= 600
soak: $(STAMP)
	$(BIN)/python -m benchmarks.soak --seconds $(SOAK_SECONDS)

lint: $(STAMP)
	$(BIN)/ruff check service native tests benchmarks scripts
	$(BIN)/ruff format --check service native tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/vulture
	$(BIN)/lint-imports

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

## Instructions (callgrind Ir) of one call of each micro-benchmark against
## benchmarks/instructions/baseline.json: fails on growth over the threshold, whatever the load (CI runs it).
bench-gate: $(STAMP)
	$(BIN)/python -m benchmarks.instructions gate

## Rewrite that baseline, when a change is meant to cost more (or saved instructions).
bench-rebaseline: $(STAMP)
	$(BIN)/python -m benchmarks.instructions rebaseline

## Every figure of benchmarks/RESULTS.md in one run: pgbench ceiling, each scenario, RSS (~4 min).
bench-results: $(STAMP)
	$(BIN)/python -m benchmarks.results

## One sitting, side by side (~6 min): every role vs ROLES=http vs a running peer (PEER_URL), pipeline
## drain after the create run, CPU per request; gRPC GetOrder/CreateOrder (h2load) vs a bare grpc.aio echo.
PEER_URL ?=
bench-sitting: $(STAMP)
	$(BIN)/python -m benchmarks.sitting $${PEER_URL:+--peer-url $$PEER_URL}

## Before/after of whole revisions, interleaved in one sitting: make bench-revisions REVISIONS="8ffcbcf HEAD"
REVISIONS ?= HEAD~1 HEAD
bench-revisions: $(STAMP)
	$(BIN)/python -m benchmarks.revisions $(REVISIONS)

## Watchers of the change feed (issue 19, ~1 min): SSE + gRPC watchers on one service while creates run at a
## fixed rate: every change delivered once, delivery latency, RSS, CPU; WATCHERS_ARGS e.g. `--sse 100 --grpc 20
## --rate 200` or `--cost` (load tool req/s without and with the watchers attached).
WATCHERS_ARGS ?=
bench-watchers: $(STAMP)
	$(BIN)/python -m benchmarks.watchers $(WATCHERS_ARGS)

## The same REST handlers on granian RSGI (production), granian ASGI and robyn, side by side (~2 min):
## req/s, p50/p99, CPU per request, SIGTERM behaviour; writes benchmarks/runtimes/LATEST.md.
BENCH_RUNTIMES_ARGS ?=
bench-runtimes: $(STAMP)
	$(BIN)/python -m benchmarks.runtimes $(BENCH_RUNTIMES_ARGS)

## Issue 18's overload figure (~2 min): DB_POOL_SIZE=2, unloaded p99, the connections it can serve, then 10x
## that many with GET/POST; every response's status and latency, every acknowledged create checked in PostgreSQL.
BENCH_OVERLOAD_ARGS ?=
bench-overload: $(STAMP)
	$(BIN)/python -m benchmarks.overload $(BENCH_OVERLOAD_ARGS)

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
