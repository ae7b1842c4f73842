# The two commands of the README: `make run` and `make test`. Everything else is a step they take.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Every process reads .env (marketplace/startup.py), under the real environment; the first `make run` or
# `make test` writes one with the local defaults below and a generated secret key (see .env.example).
LOCAL_DEFAULTS := DJANGO_DEBUG=true DATABASE_URL=postgres://postgres@127.0.0.1:5432/marketplace \
	CELERY_BROKER_URL=redis://127.0.0.1:6379/0 CELERY_RESULT_BACKEND=redis://127.0.0.1:6379/0

.PHONY: run test test-rabbitmq setup system-deps lint typecheck openapi clean

$(BIN)/uv:
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found: install Python 3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv==0.13.9

# --compile-bytecode: without .pyc files every process compiles what it imports at each start, and writes
# nothing back where PYTHONDONTWRITEBYTECODE is set (these machines; the bench's processes): django.setup()
# and the app's imports took 3.1 s of CPU per worker, CLI or test process instead of 1.2 s.
$(VENV)/.synced: $(BIN)/uv requirements-dev.lock Makefile
	$(BIN)/uv pip sync --quiet --compile-bytecode --python $(BIN)/python requirements-dev.lock
	touch $@

setup: $(VENV)/.synced

# Written once, never overwritten (a file target without prerequisites); git-ignored, readable by its owner only.
.env:
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found: install Python 3.11"; exit 1; }
	@umask 077 && { \
		echo "# Written by the first 'make run' or 'make test'; make never overwrites it. Every variable: .env.example."; \
		for pair in $(LOCAL_DEFAULTS); do echo "$$pair"; done; \
		echo "DJANGO_SECRET_KEY=$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(50))')"; \
	} > $@.tmp && mv $@.tmp $@
	@echo "make: wrote .env (local defaults and a new DJANGO_SECRET_KEY; edit it to change them)"

# Debian packages the tests use: Prometheus (its server and promtool) for the alert rules and the dashboards'
# end-to-end test, and Alertmanager (its server and amtool) for the routing tree - required; Chromium for the
# admin browser tests - optional (they skip without it).
# Installed when missing if we can (root with apt-get); otherwise named in one line.
system-deps:
	@need=""; want=""; \
	for cmd in prometheus promtool; do command -v $$cmd >/dev/null || need=" prometheus"; done; \
	for cmd in prometheus-alertmanager amtool; do command -v $$cmd >/dev/null || need="$$need prometheus-alertmanager"; done; \
	command -v chromium >/dev/null || want="chromium"; \
	if [ -n "$$need$$want" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "make: installing $$need $$want from Debian"; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$need $$want >/dev/null; \
	elif [ -n "$$need" ]; then \
		echo "make: the tests need Debian's packages:$$need (sudo apt-get install$$need)"; exit 1; \
	elif [ -n "$$want" ]; then \
		echo "make: chromium not installed: the admin browser tests will skip (sudo apt-get install chromium)"; \
	fi

# Sets up and runs web + the four workers (one per queue group: Procfile) + beat + Flower with demo data;
# Ctrl-C stops everything. Safe to run again:
# the demo data is loaded once, and the admin's password is always the one in var/admin-password.
run: setup .env
	@$(BIN)/python -m marketplace.preflight --port web=8000 --port flower=5555
	@mkdir -p var
	$(BIN)/python manage.py migrate --noinput -v0
	@test -s var/admin-password || (umask 077 && $(BIN)/python -c "import secrets; print(secrets.token_urlsafe(12))" > var/admin-password)
	$(BIN)/python manage.py demo_admin --password-file var/admin-password
	$(BIN)/python manage.py seed_demo
	@echo "Admin and Flower login: admin / $$(cat var/admin-password)  (stored in var/admin-password)"
	@echo "API: http://127.0.0.1:8000/api/promos   Admin: http://127.0.0.1:8000/admin/   Flower: http://127.0.0.1:5555/"
# exec: make's child is then the launcher itself, so a SIGTERM to make reaches honcho; devrun exits 0 when
# a signal stopped everything, so a normal stop does not end with "make: *** Error 130/143".
	@LOG_FORMAT=console FLOWER_BASIC_AUTH=admin:$$(cat var/admin-password) PATH=$(CURDIR)/$(BIN):$$PATH \
		exec $(BIN)/python -m marketplace.devrun

# Sets up and passes every test: lint, types, and the suite against real Postgres, Redis and workers - then the
# tests that use the broker once more with RabbitMQ as the broker (test-rabbitmq).
test: setup .env system-deps lint typecheck
	$(BIN)/python -m marketplace.preflight
	$(BIN)/pytest $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-rabbitmq

# The tests that use the broker (a worker, or the queues a publish fills: tests/conftest.py picks them) with
# RabbitMQ as the broker, in a virtual host of the run's own on RABBITMQ_TEST_URL's server; results and the app's
# state stay in the run's Redis database.
RABBITMQ_TEST_URL ?= amqp://guest:guest@127.0.0.1:5672/
RABBITMQ_TEST_ENV := CELERY_BROKER_URL=$(RABBITMQ_TEST_URL) REDIS_URL=redis://127.0.0.1:6379/0
test-rabbitmq: setup .env
	$(RABBITMQ_TEST_ENV) $(BIN)/python -m marketplace.preflight
	$(RABBITMQ_TEST_ENV) $(BIN)/pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup .env
	$(BIN)/mypy .

# Regenerates the API's committed OpenAPI document after a change to a view, serializer or schema.py (the
# suite fails until it matches: tests/promotions/test_api_schema.py).
openapi: setup .env
	$(BIN)/python manage.py spectacular --validate --fail-on-warn --file docs/openapi.yaml

clean:
	rm -rf $(VENV) var
