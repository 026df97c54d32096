# otel-render: the two Quick start commands (make demo, make test) and the rest.
# Every target creates .venv on first use; nothing is installed outside it,
# except PostgreSQL and promtool (Debian packages) for the tests, which need root.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST := $(PY) -m pytest

.PHONY: demo test test-unit test-matrix test-sqlalchemy-versions bench chaos services clean

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "otel-render needs Python 3.10 or newer"'
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
		echo "python3 -m venv failed: installing Debian's python3-venv"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && \
		$(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

## demo: the example app under opentelemetry-instrument gunicorn -w 2 --preload, with traffic
demo: $(VENV)/.installed
	$(PY) examples/demo.py $(DEMO_ARGS)

## services: what the test suite needs besides Python (PostgreSQL binaries, promtool)
services:
	@sh scripts/ensure-postgres.sh
	@sh scripts/ensure-promtool.sh

## test: the whole suite, with real gunicorn, PostgreSQL, promtool and a loopback OTLP receiver
test: $(VENV)/.installed services
	$(PYTEST) -q $(PYTEST_ARGS)

## test-unit: the tests that need no server
test-unit: $(VENV)/.installed
	$(PYTEST) -q -m "not integration" $(PYTEST_ARGS)

## test-matrix: the unit tests on every other Python 3.10+ this machine has
test-matrix:
	@sh scripts/test-matrix.sh

## test-sqlalchemy-versions: the database tests on SQLAlchemy 1.4 and 2.0 (the suite itself runs on 2.1)
test-sqlalchemy-versions: services
	@sh scripts/test-sqlalchemy-versions.sh $(PYTEST_ARGS)

## bench: benchmarks, each side by side with plain OpenTelemetry in the same run
bench: $(VENV)/.installed
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .venv-* .bench .demo .pytest_cache
