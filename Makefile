# The two commands a newcomer needs: `make demo` and `make test`. Everything else supports them.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install system-deps demo test lint typecheck protos protos-check unit e2e clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

install: system-deps $(STAMP)

system-deps:
	@deploy/system-deps.sh

demo: install
	$(PY) -m devenv.demo

test: install protos-check lint typecheck
	$(VENV)/bin/pytest -q

unit: install
	$(VENV)/bin/pytest -q tests/unit

e2e: install
	$(VENV)/bin/pytest -q tests/e2e

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy controlplane agent cli wire redact devenv

protos: install
	$(PY) protos/generate.py

protos-check: install
	$(PY) protos/generate.py --check

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis demo-data
