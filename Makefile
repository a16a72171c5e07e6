# One entry point for humans and CI. `make demo` and `make test` create .venv and
# install everything they need on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.statekit-installed
PYTEST_ARGS ?=
# two pytest-xdist workers, a test file each at a time (module fixtures stay whole);
# PYTEST_JOBS=0 runs the suite in one process
PYTEST_JOBS ?= 2

.PHONY: demo test lint typecheck pytest bench clean install

install: $(STAMP)

$(STAMP): pyproject.toml adapters/flask-statekit/pyproject.toml adapters/django-statekit/pyproject.toml \
		adapters/starlette-statekit/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade 'pip>=25.1'
	$(PY) -m pip install --quiet --disable-pip-version-check \
		-e '.[all,embedded]' -e ./adapters/flask-statekit -e ./adapters/django-statekit \
		-e ./adapters/starlette-statekit \
		--group dev
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/statekit dev --blobs-dir examples/flask_app/instance/blobs -- $(PY) -m examples.flask_app

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(PY) -m pytest $(if $(filter-out 0,$(PYTEST_JOBS)),-n $(PYTEST_JOBS) --dist loadfile) $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(STAMP)
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache build dist
