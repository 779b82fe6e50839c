# Two commands on a fresh machine: `make serve` and `make test`. Both bootstrap .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SOURCES := service tests bench

.PHONY: install serve worker test lint format openapi bench clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-backpack.txt pyproject.toml service/diagnostics/stats/kernel.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-backpack.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

serve: install
	$(VENV)/bin/gradiag serve

# A Celery worker for GRADIAG_BACKEND=celery (Redis at GRADIAG_BROKER_URL).
worker: install
	$(VENV)/bin/gradiag worker

test: lint
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/ruff format --check $(SOURCES)
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff check --fix $(SOURCES)
	$(VENV)/bin/ruff format $(SOURCES)

openapi: install
	$(VENV)/bin/gradiag openapi > openapi.json

bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache service/diagnostics/stats/_kernel*.so
