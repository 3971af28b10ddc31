# `make test` and `make demo` work from a fresh clone: they create .venv and
# install the project (with pinned dependencies) on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-slow demo install format clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

test-slow: $(STAMP)
	$(PY) -m pytest -q --run_slow tests

demo: $(STAMP)
	bash scripts/demo.sh

format: $(STAMP)
	$(PY) -m black pipelines model configs tests benchmarks setup.py

clean:
	rm -rf $(VENV) build *.egg-info demo_output
