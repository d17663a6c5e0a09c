# sagaline — every target creates/refreshes the virtualenv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo demo-secure platform test test-containers compose-demo unit fix lint up down status chaos bench clean

$(STAMP): pyproject.toml tools/asyncapi/package-lock.json
	@tools/system-deps.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	@# the official AsyncAPI parser validates the contract in the tests (needs Node.js)
	@if command -v npm >/dev/null 2>&1; then npm ci --prefix tools/asyncapi --no-audit --no-fund --loglevel=error; fi
	@touch $(STAMP)

## demo: the main job — local Kafka + PostgreSQL, the saga's services, 1,000 orders, invariants
ORDERS ?= 1000
demo: $(STAMP)
	$(BIN)/sagaline demo --orders $(ORDERS)

## demo-secure: the demo under least privilege on its own stack: Kafka over SASL_SSL with ACLs,
## PostgreSQL over TLS, every service as its own Kafka user and PostgreSQL role
SECURE_ENV := SAGALINE_STATE_DIR=.sagaline/secure SAGALINE_LOCAL_KAFKA_PORT=19192 \
	SAGALINE_LOCAL_POSTGRES_PORT=15532 SAGALINE_METRICS_PORT=9500 \
	SAGALINE_POSTGRES_ROLE_PASSWORDS_DIR=.sagaline/secure/secure/pg-passwords
demo-secure: $(STAMP)
	$(SECURE_ENV) $(BIN)/sagaline dev up --secure
	$(SECURE_ENV) $(BIN)/sagaline db roles
	$(SECURE_ENV) $(BIN)/sagaline demo --orders $(ORDERS)

## platform: run every service until Ctrl-C (`sagaline up`)
platform: $(STAMP)
	$(BIN)/sagaline up

## test: lint, type-check, then every test tier except chaos (real Kafka + PostgreSQL)
test: lint
	SAGALINE_TEST_BACKEND=$${SAGALINE_TEST_BACKEND:-auto} $(BIN)/python -m pytest -m "not chaos" $(PYTEST_ARGS)

## test-containers: the integration tier again, through testcontainers on locally built images
CONTAINER_ENV := SAGALINE_TEST_BACKEND=testcontainers SAGALINE_TEST_KAFKA_IMAGE=sagaline/kafka:3.9.2 \
	SAGALINE_TEST_POSTGRES_IMAGE=sagaline/postgres:15 TESTCONTAINERS_RYUK_DISABLED=true \
	TESTCONTAINERS_HOST_OVERRIDE=127.0.0.1
test-containers: $(STAMP)
	@tools/system-deps.sh --containers
	tools/containers/build-images.sh
	$(CONTAINER_ENV) $(BIN)/python -m pytest tests/integration -m "not chaos" $(PYTEST_ARGS)

## compose-demo: compose.yaml up on locally built images, 1,000 orders + invariants, down clean;
## then its secure mode (deploy/compose.secure.yaml): 300 orders, the principals' denials
compose-demo: $(STAMP)
	@tools/system-deps.sh --containers
	tools/containers/compose-demo.sh
	SAGALINE_COMPOSE_SECURE=1 SAGALINE_COMPOSE_ORDERS=$${SAGALINE_COMPOSE_SECURE_ORDERS:-300} \
	  tools/containers/compose-demo.sh

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

## fix: format and apply safe lint fixes, then check
fix: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	$(BIN)/mypy

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## chaos: every fault-injection scenario (long; make test runs a fast subset), then the table
chaos: $(STAMP)
	@rm -f .sagaline/chaos/results.jsonl
	SAGALINE_TEST_BACKEND=$${SAGALINE_TEST_BACKEND:-local} $(BIN)/python -m pytest tests/reliability/test_chaos.py $(PYTEST_ARGS); \
	  status=$$?; $(BIN)/python -m tests.reliability.chaos.report; exit $$status

bench: $(STAMP)
	$(BIN)/python -m benchmarks
	$(BIN)/python -m sagaline bench

up: $(STAMP)
	$(BIN)/sagaline dev up

down: $(STAMP)
	$(BIN)/sagaline dev down

status: $(STAMP)
	$(BIN)/sagaline dev status

clean: down
	rm -rf .sagaline
